"""plugins/shared/dae"""
