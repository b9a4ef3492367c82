"""plugins/shared"""
