"""wsbench/harness"""
