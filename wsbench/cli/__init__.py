"""wsbench/cli"""
