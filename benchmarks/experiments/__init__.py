"""The experiments behind the figures and tables the docs quote; run them through
``benchmarks/experiment.py``. One module per experiment, each with a Typer ``app``; their shared
setup is ``experiments.common``."""
