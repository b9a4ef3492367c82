"""Built-in dataset adapters (installed as ``wsbench.datasets``); one module per source."""
