"""Built-in method plugins (installed as ``wsbench.plugins``); one module per method."""
