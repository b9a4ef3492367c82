"""plugins/common"""
