"""wsbench/models"""
