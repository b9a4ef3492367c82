"""Built-in method plugins (installed as ``wsbench.plugins``): one package per method, and
``common`` for code several of them share."""
