"""Hide-and-Seek speed/accuracy curve: DDIM steps × Detection F1 / Instance Dice × seconds.

Usage:

    python benchmarks/experiment.py hideseek-curve measure --settings 20/20,50/50 --vertebrae 60
    python benchmarks/experiment.py hideseek-curve measure --settings faithful --vertebrae 8
    python benchmarks/experiment.py hideseek-curve measure --settings 20/20 --vertebrae 60 \\
        --healthy 60 -p min_candidate_px=40
    python benchmarks/experiment.py hideseek-curve measure --variant paper --settings 100/20
    python benchmarks/experiment.py hideseek-curve report docs/figures/hideseek_curve_<DAE>.csv
    python benchmarks/experiment.py hideseek-curve edit   # size of the Eq. (1) edit, per steps

The default step counts, candidate-size prior (``min_candidate_px``) and outline redrawing
(``boundary_px``) are chosen from this curve, so it is measured on the **training** split, never
the test split: a fixed, seeded subset of malignant training vertebrae with a lesion on the mid
slice (the phantom's training vertebrae have lesion masks on disk; they are read here only for
this measurement, never by the method). ``--vertebrae k`` takes the first ``k`` of one seeded
order (after ``--offset``, which extends a measured subset, or draws a disjoint one to confirm a
choice), so a smaller faithful run uses the first ``k`` vertebrae of a larger one. ``--healthy
k`` adds the first ``k`` healthy training vertebrae of another seeded order: their false
positives give the ``fp_per_healthy`` columns; every other column is over malignant vertebrae.
Each vertebra gets its patient's phenotype hint, as in a run.

A setting is ``S/D`` (stochastic-encoding / decoding DDIM steps) of the chosen ``--variant``:

* ``default``: ``HideAndSeek`` (reference = the DAE's reconstruction, no projection);
* ``paper``: ``HideAndSeekPaper`` (the input as reference, every ``I_hide`` inverted,
  decoded and re-encoded; 5-pixel candidates, the difference map's outlines) at ``S/D`` steps,
  batched;
* ``input``: the default with the input as reference;
* ``inverted``: the default with every ``I_hide`` projected (inverted, decoded, re-encoded).

``faithful`` is ``HideAndSeekPaper`` exactly (250/100 steps, unbatched). Rows are named
``S/D`` followed by every choice that differs from the paper's (``+projection=none``,
``+reference=reconstruction``, ``+min_candidate_px=25``, ``+boundary=image``) and every ``-p``
parameter, so the default is ``20/20+projection=none+reference=reconstruction+
min_candidate_px=25+boundary=image``.

Every vertebra goes through the harness's own code: ``segment_vertebra`` (method, output
validation, post-processing) under the runner's per-vertebra seed, scored by ``case_record``
(panoptica: Detection F1 ``f1``, Instance Dice ``sq``). The gate (``c(z) ≥ 0.5``) is off so that
every vertebra is segmented and timed; ``*_gated`` columns give what the gate would have scored
(an empty prediction when ``c(z) < 0.5``). ``measure`` merges its rows into one CSV per DAE
(``docs/figures/hideseek_curve_<DAE stem>.csv``; ``--csv`` overrides), one row per setting ×
vertebra; ``report`` prints the table and the paired comparison with faithful and draws the
figure. One torch thread throughout; wall and CPU seconds are both recorded (CPU time of the
one-thread process is the figure that other jobs on a shared machine disturb least).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import typer

from wsbench.contract import Phenotype, PreparedVertebra, Split, WeakLabel
from wsbench.data.intensity import hu_to_unit, unit_to_hu
from wsbench.harness.params import method_params
from wsbench.harness.postprocess import MIN_COMPONENT_PX
from wsbench.harness.runner import case_record, seed_everything, segment_vertebra, vertebra_seed
from wsbench.plugins.common.dae.latent import encode_slices
from wsbench.plugins.common.dae.network import to_tensor
from wsbench.plugins.hideseek import (
    DEFAULT_BOUNDARY_PX,
    HideAndSeek,
    HideAndSeekPaper,
)
from wsbench.plugins.hideseek.attribution import healthy_latent

from .common import (
    FIGURES,
    dae_path,
    fitted,
    hints,
    markdown,
    prepared,
    pyplot,
    save_figure,
    seeded_vertebrae,
    threads,
)

FAITHFUL = "faithful"
KEY = ["setting", "vertebra"]


class InputReference(HideAndSeek):
    """The default with the paper's reference: ``D`` and Eq. (2) against the input ``I``."""

    reference = "input"


class Inverted(HideAndSeek):
    """The default with the paper's projection: every ``I_hide`` inverted, decoded and
    re-encoded before it is classified."""

    invert = True


VARIANTS: dict[str, type[HideAndSeek]] = {
    "default": HideAndSeek,
    "paper": HideAndSeekPaper,
    "input": InputReference,
    "inverted": Inverted,
}
"""The configurations ``measure --variant`` runs at ``S/D`` steps."""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def parse_steps(text: str) -> tuple[int, int]:
    """``S/D`` as (stochastic-encoding, decoding) DDIM steps."""
    try:
        stochastic, decode = (int(part) for part in text.strip().split("/"))
    except ValueError as exc:
        raise typer.BadParameter(f"setting {text!r} is neither 'faithful' nor 'S/D'") from exc
    return stochastic, decode


def setting_name(method: HideAndSeek, extra: dict[str, Any], faithful: bool = False) -> str:
    """``faithful``, or ``S/D``, followed by ``+key=value`` for every choice that differs from
    the paper's and every other parameter given in ``extra``."""
    variant: dict[str, Any] = {}
    if not faithful:
        if not method.invert:
            variant["projection"] = "none"
        if method.reference != "input":
            variant["reference"] = method.reference
        if method.min_candidate_px != MIN_COMPONENT_PX:
            variant["min_candidate_px"] = method.min_candidate_px
        if method.boundary_px > 0:
            variant["boundary"] = "image"
            if method.boundary_px != DEFAULT_BOUNDARY_PX:
                variant["boundary_px"] = method.boundary_px
    variant |= {k: v for k, v in extra.items() if k not in variant and k != "boundary_px"}
    steps = FAITHFUL if faithful else f"{method.steps_stochastic}/{method.steps_decode}"
    return steps + "".join(f"+{k}={v:g}" if isinstance(v, float) else f"+{k}={v}"
                           for k, v in variant.items())  # fmt: skip


def measure_one(
    method: HideAndSeek, vertebra: PreparedVertebra, hint: Phenotype | None, seed: int
) -> dict[str, Any]:
    """Seconds, candidates and lesion metrics of one vertebra, as the harness computes them."""
    seed_everything(vertebra_seed(seed, vertebra.key.id))
    start, start_cpu = time.perf_counter(), time.process_time()
    seg, _ = segment_vertebra(method, vertebra, hint)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    record = case_record(vertebra, seg.labels, True, "ok", "")
    image = vertebra.sample().image[None]
    c_z = float(method.classifier_of(hint).probability(encode_slices(method.dae, image))[0])
    empty = case_record(vertebra, np.zeros_like(seg.labels), True, "ok", "")
    gated = record if c_z >= 0.5 else empty
    return {
        "vertebra": vertebra.key.id,
        "category": record["category"],
        "c_z": c_z,
        "candidates": len(seg.lesions),
        "kept": sum(lesion.kept for lesion in seg.lesions),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load1": os.getloadavg()[0],
        "f1": record["f1"],
        "sq": record["sq"],
        "global_dice": record["global_dice"],
        "precision": record["precision"],
        "recall": record["recall"],
        "fp": record["fp"],
        "f1_gated": gated["f1"],
        "sq_gated": gated["sq"],
        "fp_gated": gated["fp"],
    }


def merge_rows(csv: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The CSV's rows with ``rows`` added, replacing earlier rows of the same setting × vertebra."""
    new = pd.DataFrame(rows)
    if csv.exists():
        old = pd.read_csv(csv)
        old = old[~old.set_index(KEY).index.isin(new.set_index(KEY).index)]
        new = pd.concat([old, new], ignore_index=True)
    csv.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(csv, index=False)
    return new


@app.command()
def measure(
    settings: Annotated[str, typer.Option(help="comma list of S/D step pairs or 'faithful'")] = (
        "5/5,10/10,20/20,50/50"
    ),
    variant: Annotated[
        str, typer.Option(help=f"configuration of the S/D settings: {', '.join(VARIANTS)}")
    ] = "default",
    vertebrae: Annotated[int, typer.Option(help="malignant vertebrae of the seeded subset")] = 12,
    healthy: Annotated[
        int, typer.Option(help="healthy vertebrae of a seeded subset, for false positives")
    ] = 0,
    offset: Annotated[int, typer.Option(help="skip this many of the seeded order first")] = 0,
    seed: Annotated[int, typer.Option(help="subset order and runner seed")] = 0,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    checkpoint: Annotated[Path | None, typer.Option(help="DAE (default: the dataset's)")] = None,
    batch_size: Annotated[int, typer.Option(help="images per batched DDIM pass")] = 8,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="hideseek parameter key=value (repeatable)"),
    ] = None,
    csv: Annotated[
        Path | None, typer.Option(help="per-vertebra results (default: named after the DAE)")
    ] = None,
) -> None:
    """Time and score each setting on the seeded training subset; merge rows into ``csv``."""
    if variant not in VARIANTS:
        raise typer.BadParameter(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    threads(1)
    cls = VARIANTS[variant]
    extra = method_params(cls, param or [])
    data = prepared(dataset)
    loaded = fitted(data, checkpoint)
    csv = csv or FIGURES / f"hideseek_curve_{dae_path(data, checkpoint).stem}.csv"
    train = data.split(Split.TRAIN)
    chosen = seeded_vertebrae(train, vertebrae, seed, WeakLabel.MALIGNANT, offset)
    chosen += seeded_vertebrae(train, healthy, seed, WeakLabel.HEALTHY)
    patient = hints(data)
    rows = []
    for text in settings.split(","):
        faithful = text.strip() == FAITHFUL
        params: dict[str, Any] = {"only_malignant": False, **extra}
        if faithful:
            method = HideAndSeekPaper.from_parts(
                loaded.dae, loaded.classifier, loaded.directions, **params
            )
        else:
            stochastic, decode = parse_steps(text)
            params |= {"steps_stochastic": stochastic, "steps_decode": decode,
                       "batch_size": batch_size}  # fmt: skip
            method = cls.from_parts(loaded.dae, loaded.classifier, loaded.directions, **params)
        name = setting_name(method, extra, faithful)
        for v in chosen:
            row = {"setting": name, "steps_stochastic": method.steps_stochastic,
                   "steps_decode": method.steps_decode, "batch_size": method.batch_size,
                   **measure_one(method, v, patient[v.key.patient], seed)}  # fmt: skip
            print(f"{name} {row['vertebra']:<24} {row['seconds']:7.2f} s  "
                  f"{row['candidates']:3d} candidates  F1 {row['f1']:.3f}  SQ {row['sq']:.3f}  "
                  f"FP {row['fp']}", flush=True)  # fmt: skip
            rows.append(row)
            merge_rows(csv, rows)
    print(f"wrote {csv}")


def edit_diagnostics(
    method: HideAndSeek, vertebra: PreparedVertebra, steps: tuple[int, int]
) -> dict[str, Any]:
    """How far Eq. (1) moves ``z`` and the image, and what ``D = I − I_healthy`` holds (HU)."""
    sample = vertebra.sample()
    body, lesion = sample.body_mask.astype(bool), vertebra.reference > 0
    plane = method.classifier.plane
    with torch.inference_mode():
        x = to_tensor(hu_to_unit(sample.image[None]))
        z = method.dae.encode(x)
        z_healthy = healthy_latent(z.double().numpy(), plane, method.p_target)
        x_t = method.dae.stochastic_encode(x, z, steps[0])
        recon = method.dae.decode(x_t, z, steps[1])[0, 0].double().numpy()
        edit = method.dae.decode(x_t, torch.as_tensor(z_healthy, dtype=z.dtype), steps[1])
    image, healthy = unit_to_hu(x[0, 0].double().numpy()), unit_to_hu(edit[0, 0].double().numpy())
    difference = image - healthy
    return {
        "vertebra": vertebra.key.id,
        "steps": f"{steps[0]}/{steps[1]}",
        "c_z": float(plane.probability(z.double().numpy())[0]),
        "edit_norm_z": float(np.linalg.norm(z_healthy - z.double().numpy())),
        "edit_hu": float(np.abs(healthy - unit_to_hu(recon))[body].mean()),
        "mean_abs_D_hu": float(np.abs(difference)[body].mean()),
        "D_lesion_hu": float(difference[lesion & body].mean()),
        "D_rest_hu": float(difference[~lesion & body].mean()),
    }


@app.command()
def edit(
    vertebrae: Annotated[int, typer.Option(help="first vertebrae of the seeded subset")] = 3,
    settings: Annotated[str, typer.Option(help="S/D step pairs")] = "5/5,20/20,50/50,250/100",
    seed: Annotated[int, typer.Option(help="subset order")] = 0,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    checkpoint: Annotated[Path | None, typer.Option(help="DAE (default: the dataset's)")] = None,
) -> None:
    """Size of the Eq. (1) edit in latent and image space, and of ``D``, per step count."""
    threads(1)
    data = prepared(dataset)
    method = fitted(data, checkpoint)
    plane = method.classifier.plane
    spread = float(np.linalg.norm(method.classifier.scale))
    print(f"classifier C {method.classifier.C}, ‖n‖ (raw z) {np.linalg.norm(plane.normal):.1f}, "
          f"latent spread ‖σ‖ {spread:.3f}")  # fmt: skip
    steps = [parse_steps(text) for text in settings.split(",")]
    chosen = seeded_vertebrae(data.split(Split.TRAIN), vertebrae, seed, WeakLabel.MALIGNANT)
    rows = [edit_diagnostics(method, v, s) for v in chosen for s in steps]
    print(markdown(pd.DataFrame(rows).set_index("vertebra")))


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: vertebrae, wall and CPU seconds, candidates, F1 and Instance Dice."""
    if "cpu_seconds" not in table:
        table = table.assign(cpu_seconds=np.nan)
    for column in ("precision", "recall", "fp", "fp_gated"):
        if column not in table:
            table = table.assign(**{column: np.nan})
    is_healthy = table["category"] == "healthy"
    healthy = table[is_healthy].groupby("setting", sort=False)
    grouped = table[~is_healthy].groupby("setting", sort=False)
    out = pd.DataFrame(
        {
            "steps": grouped["steps_stochastic"].first().astype(str)
            + "/"
            + grouped["steps_decode"].first().astype(str),
            "batch": grouped["batch_size"].first(),
            "n": grouped.size(),
            "wall_s": grouped["seconds"].mean(),
            "cpu_s": grouped["cpu_seconds"].mean(),
            "cpu_n": grouped["cpu_seconds"].count(),
            "candidates": grouped["candidates"].mean(),
            "cpu_s_per_candidate": grouped["cpu_seconds"].sum() / grouped["candidates"].sum(),
            "f1": grouped["f1"].mean(),
            "sq": grouped["sq"].mean(),
            "sq_n": grouped["sq"].count(),
            "precision": grouped["precision"].mean(),
            "recall": grouped["recall"].mean(),
            "f1_gated": grouped["f1_gated"].mean(),
            "sq_gated": grouped["sq_gated"].mean(),
            "healthy_n": healthy.size(),
            "fp_per_healthy": healthy["fp"].mean(),
            "fp_per_healthy_gated": healthy["fp_gated"].mean(),
        }
    )
    out["healthy_n"] = out["healthy_n"].fillna(0).astype(int)
    return out.loc[sorted(out.index, key=setting_order)]


def variant_of(setting: str) -> str:
    """The ``+key=value`` part of a setting's name (``""`` for the paper's variant)."""
    return setting.partition("+")[2]


def setting_order(setting: str) -> tuple[bool, str, int, int]:
    """Faithful last; otherwise by variant, then by stochastic and decoding steps."""
    steps = setting.partition("+")[0]
    if steps == FAITHFUL:
        return (True, variant_of(setting), 0, 0)
    stochastic, decode = steps.split("/")
    return (False, variant_of(setting), int(stochastic), int(decode))


def paired_with_faithful(table: pd.DataFrame) -> pd.DataFrame:
    """Each setting against faithful on the vertebrae both measured: speed-ups, F1, SQ.

    Speed-ups are ratios of mean wall and of mean CPU seconds over the shared vertebrae (CPU
    time of the one-thread process is far less sensitive to other jobs on the machine).
    """
    if "cpu_seconds" not in table:
        table = table.assign(cpu_seconds=np.nan)
    wide = table.pivot(index="vertebra", columns="setting",
                       values=["seconds", "cpu_seconds", "f1", "sq"])  # fmt: skip
    if FAITHFUL not in wide["seconds"]:
        return pd.DataFrame()
    both = wide[wide["seconds"][FAITHFUL].notna()]
    rows = {}
    for setting in wide["seconds"].columns.drop(FAITHFUL):
        shared = both[both["seconds"][setting].notna()]
        if shared.empty:
            continue
        sq_pairs = shared["sq"][[setting, FAITHFUL]].dropna()
        wall, cpu = shared["seconds"], shared["cpu_seconds"]
        rows[setting] = {
            "n": len(shared),
            "wall_s": wall[setting].mean(),
            "wall_s_faithful": wall[FAITHFUL].mean(),
            "speedup_wall": wall[FAITHFUL].mean() / wall[setting].mean(),
            "cpu_s": cpu[setting].mean(),
            "cpu_s_faithful": cpu[FAITHFUL].mean(),
            "speedup_cpu": cpu[FAITHFUL].mean() / cpu[setting].mean(),
            "f1": shared["f1"][setting].mean(),
            "f1_faithful": shared["f1"][FAITHFUL].mean(),
            "sq": shared["sq"][setting].mean(),
            "sq_faithful": shared["sq"][FAITHFUL].mean(),
            "sq_diff_paired": (sq_pairs[setting] - sq_pairs[FAITHFUL]).mean(),
            "sq_pairs": len(sq_pairs),
        }
    if not rows:
        return pd.DataFrame()
    out = pd.DataFrame.from_dict(rows, orient="index").astype({"n": int, "sq_pairs": int})
    return out.loc[sorted(out.index, key=setting_order)]


def draw(table: pd.DataFrame, out: Path) -> None:
    """Detection F1 and Instance Dice against seconds per vertebra, one line per variant.

    Time is CPU seconds when every setting has them, else wall seconds.
    """
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    plt = pyplot()
    column = "cpu_s" if table["cpu_s"].notna().all() else "wall_s"
    unit = "CPU" if column == "cpu_s" else "wall"
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharex=True)
    metrics = [("f1", "Detection F1"), ("sq", "Instance Dice (matched lesions)")]
    batched = table[table.index != FAITHFUL]
    variants = batched.groupby(batched.index.map(variant_of), sort=False)
    for axis, (metric, title) in zip(axes, metrics, strict=True):
        for variant, rows in variants:
            rows = rows.sort_values(column)
            axis.plot(rows[column], rows[metric], marker="o", label=variant or "paper's variant")
            for setting, row in rows.iterrows():
                axis.annotate(f"{setting.partition('+')[0]} (n={row['n']})",
                              (row[column], row[metric]), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
        if FAITHFUL in table.index:
            row = table.loc[FAITHFUL]
            axis.plot(row[column], row[metric], marker="*", ms=12, color="black", ls="",
                      label=f"faithful (250/100, unbatched, n={row['n']})")  # fmt: skip
        axis.set(xscale="log", xlabel=f"{unit} seconds per vertebra (1 thread)",
                 ylabel="mean over vertebrae", title=title)  # fmt: skip
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
    axes[0].legend(fontsize=7)
    fig.suptitle("Hide-and-Seek speed/accuracy, malignant phantom TRAINING vertebrae (gate off, "
                 "harness post-processing, panoptica)")  # fmt: skip
    fig.tight_layout()
    save_figure(fig, out)


@app.command()
def report(
    csv: Annotated[Path, typer.Argument(help="per-vertebra results written by measure")],
    out: Annotated[Path | None, typer.Option(help="figure (default: the CSV's name)")] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="draw only these variants ('' = the paper's; repeatable)"),
    ] = None,
) -> None:
    """Print the curve table and the paired comparison with faithful; draw the figure."""
    table = pd.read_csv(csv)
    curve = summary(table)
    print(markdown(curve))
    paired = paired_with_faithful(table)
    default = setting_name(HideAndSeek(), {})
    if not paired.empty:
        print("\nagainst faithful on the same vertebrae:")
        print(markdown(paired))
        if default in paired.index:
            row = paired.loc[default]
            pairs = int(row["sq_pairs"])
            print(
                f"\ndefault {default}: {row['speedup_wall']:.1f}× (wall) / "
                f"{row['speedup_cpu']:.1f}× (CPU) faster than faithful; Instance Dice "
                f"{row['sq']:.3f} vs {row['sq_faithful']:.3f} (paired difference "
                f"{row['sq_diff_paired']:+.3f}, {pairs} vertebrae)"
            )
    if variant is not None:
        curve = curve[[name == FAITHFUL or variant_of(name) in variant for name in curve.index]]
    draw(curve, out or csv.with_suffix(".png"))
