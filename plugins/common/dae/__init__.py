"""plugins/common/dae"""
