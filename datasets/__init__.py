"""Built-in dataset adapters (installed as ``wsbench.datasets``): one package per source."""
