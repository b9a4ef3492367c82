"""wsbench/report"""
