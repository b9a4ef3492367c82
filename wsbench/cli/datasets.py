"""``wsbench datasets``: list the adapters; ``check`` prepares a dataset, summarises its
contents and lists everything skipped, exiting non-zero when a file or the dataset is unusable."""

from __future__ import annotations

from collections import Counter

import typer
from rich.table import Table

from wsbench.cli.common import (
    DatasetName,
    DatasetOptions,
    Root,
    console,
    dataset_adapter,
    parse_dataset_options,
    plugin_table,
    user_errors,
)
from wsbench.contract import PreparedDataset, Scope
from wsbench.data.volumes import LEVEL_NUMBERS
from wsbench.harness.registry import DATASETS_GROUP
from wsbench.models.store import cache_root

app = typer.Typer(help="List dataset adapters, or check a dataset.", no_args_is_help=False)


@app.callback(invoke_without_command=True)
def datasets(ctx: typer.Context) -> None:
    """List the registered dataset adapters (what each is and whether it is ready here), or
    check a dataset."""
    if ctx.invoked_subcommand is None:
        with user_errors():
            console.print(plugin_table(DATASETS_GROUP, "wsbench datasets"))


def _level_order(level: str) -> tuple[float, str]:
    """Cranio-caudal order (T13 between T12 and L1); unknown names last."""
    number = LEVEL_NUMBERS.get(level)
    if number == LEVEL_NUMBERS["T13"]:
        return (LEVEL_NUMBERS["T12"] + 0.5, level)
    return (float(number) if number is not None else float("inf"), level)


def summary_table(data: PreparedDataset) -> Table:
    """Subjects, vertebrae per level, labels, phenotypes, splits and lesion-mask availability."""
    vertebrae = data.vertebrae
    subjects = {(v.key.subject, v.key.session) for v in vertebrae}
    levels = Counter(v.key.level for v in vertebrae)
    labels = Counter(v.label.value if v.label else "unlabeled" for v in vertebrae)
    phenotypes = Counter(v.phenotype.value for v in vertebrae if v.phenotype)
    split_vertebrae = Counter(v.split.value for v in vertebrae)
    split_subjects = Counter(s for s in {(v.key.subject, v.split.value) for v in vertebrae})
    table = Table(title=f"dataset {data.name}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("root", str(data.root or "—"))
    table.add_row("fingerprint", data.fingerprint[:16])
    table.add_row("subjects", str(len(subjects)))
    table.add_row("vertebrae", str(len(vertebrae)))
    per_level = ", ".join(f"{lv} {levels[lv]}" for lv in sorted(levels, key=_level_order))
    table.add_row("per level", per_level or "—")
    table.add_row("labels", ", ".join(f"{k} {n}" for k, n in sorted(labels.items())) or "—")
    table.add_row("phenotypes", ", ".join(f"{k} {n}" for k, n in sorted(phenotypes.items())) or "—")
    splits = Counter(split for _, split in split_subjects)
    table.add_row(
        "splits",
        ", ".join(
            f"{s}: {splits[s]} subjects / {split_vertebrae[s]} vertebrae"
            for s in sorted(split_vertebrae)
        )
        or "—",
    )
    table.add_row("lesion masks", "yes" if data.lesion_metrics else "no")
    at_edge = sum(bool(v.geometry.get("touches_scan_border")) for v in vertebrae)
    table.add_row("touching the scan's edge", str(at_edge))
    table.add_row("skipped", scope_counts(data))
    return table


def scope_counts(data: PreparedDataset) -> str:
    """How many skipped records of each scope, e.g. ``0 dataset, 1 file, 3 vertebra``."""
    counts = Counter(item.scope for item in data.skipped)
    return ", ".join(f"{counts[scope]} {scope.value}" for scope in reversed(Scope))


def skipped_table(data: PreparedDataset) -> Table:
    """Every skipped file or vertebra with its scope and reason."""
    table = Table(title="skipped")
    table.add_column("scope")
    table.add_column("where")
    table.add_column("reason")
    for item in sorted(data.skipped, key=lambda s: list(reversed(Scope)).index(s.scope)):
        table.add_row(item.scope.value, item.where, item.reason)
    return table


@app.command("check")
def check(
    dataset: DatasetName,
    root: Root = None,
    dataset_option: DatasetOptions = None,
) -> None:
    """Prepare a dataset (cached), print its contents and every skipped problem; exit 1 when a
    file or the dataset as a whole is unusable (vertebra-level exclusions are only listed)."""
    with user_errors():
        adapter_cls = dataset_adapter(dataset, root)
        options = parse_dataset_options(dataset, dataset_option)
        data = adapter_cls(root=root, cache_dir=cache_root() / "prepared", **options).prepare()
    console.print(summary_table(data))
    if data.skipped:
        console.print(skipped_table(data))
    console.print(f"skipped: {scope_counts(data)}", highlight=False)
    if any(item.scope is not Scope.VERTEBRA for item in data.skipped):
        console.print(
            "[red]error:[/] files or the dataset above are unusable; fix them and check again",
            highlight=False,
        )
        raise typer.Exit(1)
