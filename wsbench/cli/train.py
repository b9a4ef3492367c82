"""``wsbench train``: train the models of any learned method (built-in or third-party) before a run.

The method's own :meth:`~wsbench.contract.Method.train` does the work; ``-p`` sets the method's
parameters (as for ``wsbench run``) and ``-t`` its training settings, both typed and checked
against the method's signatures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from wsbench.cli.common import (
    DEFAULT_DATASET,
    DEFAULT_THREADS,
    FLAG,
    DatasetName,
    DatasetOptions,
    Param,
    Root,
    Threads,
    dataset_adapter,
    parse_dataset_options,
    user_errors,
)

console = Console()

Setting = Annotated[
    list[str] | None,
    typer.Option(
        "--setting",
        "-t",
        metavar="KEY=VALUE",
        help="Training setting key=value (repeatable), e.g. -t steps=3000 for the DAE methods; "
        "`wsbench methods M` lists them.",
    ),
]


def train(
    method: Annotated[str, typer.Option("--method", "-m", help="Method name or module:Class.")],
    dataset: DatasetName = DEFAULT_DATASET,
    root: Root = None,
    dataset_option: DatasetOptions = None,
    param: Param = None,
    setting: Setting = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            metavar=FLAG,
            help="Continue an interrupted training run, or extend a finished one.",
        ),
    ] = False,
    threads: Threads = DEFAULT_THREADS,
) -> None:
    """Train the models of a learned method on a dataset's training split (reused when already
    stored for the same data and settings).
    Examples: `wsbench train --method gradcam`, `wsbench train --method hideseek -t steps=3000
    -t lr_decay_from=2000`, `wsbench train --method ad --resume`, `wsbench train --method
    hideseek -p device=cuda`.
    """
    from wsbench.contract import TrainOptions
    from wsbench.harness.params import method_params, train_settings
    from wsbench.harness.provenance import torch_threads
    from wsbench.harness.registry import load_method

    with user_errors():
        dataset_adapter(dataset, root)
        typed = parse_dataset_options(dataset, dataset_option)
        from wsbench.harness.runner import (  # heavy: after the quick checks above
            RunConfig,
            prepare_dataset,
            train_method,
            workdir,
        )

        torch_threads(threads)
        method_cls = load_method(method)
        params = method_params(method_cls, param or [])
        settings = train_settings(method_cls, setting or [])
        if not method_cls.learns():
            raise ValueError(f"method {method!r} learns nothing: there is nothing to train")
        instance = method_cls(**params)
        config = RunConfig(method, dataset, root=str(root) if root else None, dataset_options=typed)
        _, prepared = prepare_dataset(config)
        options = TrainOptions(workdir(method_cls), seed=seed, resume=resume)
        paths = train_method(instance, prepared.training_set(), options, settings)
    if os.environ.get("RANK", "0") != "0":
        return  # a torchrun job: rank 0 writes the model and reports it
    for path in paths:
        console.print(card_table(path))
    models = instance.models()
    if not paths and models:
        console.print("trained: " + ", ".join(f"{role} {name}" for role, name in models.items()))


def card_table(path: Path) -> Table:
    """The model card beside ``path`` as a two-column table."""
    from wsbench.models.store import read_card

    table = Table(title=str(path))
    table.add_column("field")
    table.add_column("value")
    for name, value in (read_card(path) or {"card": "missing"}).items():
        table.add_row(name, str(value))
    return table
