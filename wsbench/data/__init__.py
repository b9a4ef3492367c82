"""wsbench/data"""
