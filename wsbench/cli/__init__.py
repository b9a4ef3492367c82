"""The ``wsbench`` command line (``wsbench.cli.main:app``)."""
