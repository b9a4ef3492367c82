"""``python -m wsbench`` is the ``wsbench`` command."""

from wsbench.cli import app

app(prog_name="wsbench")
