"""``python -m wsbench`` is the ``wsbench`` command."""

from wsbench.cli.main import app

app(prog_name="wsbench")
