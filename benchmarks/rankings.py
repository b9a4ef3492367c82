"""Which rankings hold between two published leaderboards (e.g. the phantom and real anatomy).

Usage:

    python benchmarks/rankings.py leaderboard/phantom.csv leaderboard/realinsert.csv
        [--metrics f1,sq]

For each lesion category and metric both tables have, prints the methods' ranks side by side
(from each table's own ``rank`` column, over the methods both tables rank) and Kendall's τ
between the two orders (scipy; 1 = same order, −1 = reversed), as a Markdown table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from scipy.stats import kendalltau

app = typer.Typer(add_completion=False, help=__doc__)

LESION_CATEGORIES = ("blastic", "lytic", "mixed")


def shared_ranks(
    first: pd.DataFrame, second: pd.DataFrame, category: str, metric: str
) -> pd.DataFrame:
    """Both tables' means of ``metric`` in ``category`` by method, re-ranked over the methods both
    have (1 = best, ties share the lower rank), with the tables' directions."""
    rows = []
    for table in (first, second):
        part = table[(table["category"] == category) & (table["metric"] == metric)]
        rows.append(part.set_index("method")[["mean", "direction"]])
    both = rows[0].join(rows[1], lsuffix="_a", rsuffix="_b", how="inner").dropna()
    for side in ("a", "b"):
        higher = both[f"direction_{side}"].iloc[0] == "higher" if len(both) else True
        both[f"rank_{side}"] = both[f"mean_{side}"].rank(ascending=not higher, method="min")
    return both[["mean_a", "rank_a", "mean_b", "rank_b"]].sort_values("rank_a")


def rank_lines(first: pd.DataFrame, second: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Markdown rows: category, metric, each method's ``rank A → rank B`` and Kendall's τ."""
    lines = ["| category | metric | ranks (first → second) | Kendall τ |", "|---|---|---|---|"]
    for category in LESION_CATEGORIES:
        for metric in metrics:
            ranks = shared_ranks(first, second, category, metric)
            if len(ranks) < 2:
                continue
            tau = kendalltau(ranks["rank_a"], ranks["rank_b"]).statistic
            moves = ", ".join(
                f"{method} {row.rank_a:.0f}→{row.rank_b:.0f}" for method, row in ranks.iterrows()
            )
            lines.append(f"| {category} | {metric} | {moves} | {tau:.2f} |")
    return lines


@app.command()
def main(
    first: Annotated[Path, typer.Argument(help="A leaderboard CSV (wsbench leaderboard).")],
    second: Annotated[Path, typer.Argument(help="Another leaderboard CSV.")],
    metrics: Annotated[str, typer.Option(help="Comma-separated metric names.")] = "f1,sq",
) -> None:
    """Print the ranks of the methods both leaderboards rank, side by side, with Kendall's τ."""
    tables = [pd.read_csv(path) for path in (first, second)]
    typer.echo("\n".join(rank_lines(*tables, [m.strip() for m in metrics.split(",")])))


if __name__ == "__main__":
    app()
