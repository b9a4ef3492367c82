"""Hide-and-Seek speed/accuracy on the CPU, and the real-sample overlay figure.

    python benchmarks/hideseek_speed.py speed [--checkpoint dae.pt] [--dataset phantom]
    python benchmarks/hideseek_speed.py figure [--checkpoint dae.pt]

``speed`` times seconds per vertebra for the faithful loop (250/100 steps, one candidate per
DDIM pass) and the batched path at several step counts on the test split's malignant
vertebrae, and reports for each the agreement with the faithful masks (Dice of the
post-processed label maps) and, when the dataset has lesion masks, the Instance Dice.
``figure`` runs the method on the authors' real malignant sample and writes
docs/figures/hideseek_real_sample.png. One torch thread throughout, so numbers are comparable.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer
from wsbench.plugins.hideseek import FAITHFUL_STEPS, HideAndSeek, checkpoint_identity

from wsbench.latent_classifier import classifier_for
from wsbench.modelstore import SHIPPED_DIR
from wsbench.postprocess import postprocess
from wsbench.registry import load_dataset
from wsbench.types import PreparedVertebra, Segmentation, WeakLabel

app = typer.Typer(add_completion=False, help=__doc__)
ROOT = Path(__file__).resolve().parents[1]


def trained_dae(checkpoint: Path | None) -> Path:
    """The given checkpoint, or the newest shipped ``dae-*.pt``."""
    if checkpoint is not None:
        return checkpoint
    found = sorted(SHIPPED_DIR.glob("dae-*.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise typer.BadParameter(f"no dae-*.pt in {SHIPPED_DIR}; pass --checkpoint")
    return found[-1]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two label maps over their non-zero labels (1 when both are empty)."""
    both = sum(int(((a == v) & (b == v)).sum()) for v in (1, 2))
    total = int((a > 0).sum() + (b > 0).sum())
    return 1.0 if total == 0 else 2.0 * both / total


def timed_segment(method: HideAndSeek, v: PreparedVertebra) -> tuple[Segmentation, float]:
    """The method's post-processed answer for ``v`` and its wall time."""
    sample = v.sample()
    start = time.perf_counter()
    seg = method.segment(sample.image, sample.body_mask, phenotype=sample.phenotype,
                         stack=sample.stack, stack_body=sample.stack_body)  # fmt: skip
    seconds = time.perf_counter() - start
    seg.labels = postprocess(seg.labels, sample.body_mask)
    return seg, seconds


def instance_dice(seg: Segmentation, v: PreparedVertebra) -> float:
    """Instance Dice (panoptica SQ) of one vertebra, NaN without a reference."""
    from wsbench.evaluation import category_of, evaluate_case

    category = category_of(v.label, v.phenotype)
    if v.reference is None or not category:
        return float("nan")
    return float(evaluate_case(seg.labels, v.reference, category, v.spacing).get("sq", np.nan))


@app.command()
def speed(
    checkpoint: Annotated[Path | None, typer.Option(help="DAE checkpoint")] = None,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    vertebrae: Annotated[int, typer.Option(help="malignant test vertebrae to time")] = 4,
    steps: Annotated[str, typer.Option(help="step counts of the batched path")] = "5,10,20,50",
) -> None:
    """Seconds per vertebra and agreement with the faithful loop, per step count."""
    torch.set_num_threads(1)
    path = trained_dae(checkpoint)
    data = load_dataset(dataset)().prepare()
    from wsbench.nets.dae import DiffusionAutoencoder

    dae = DiffusionAutoencoder.load(path).eval()
    classifier = classifier_for(dae, checkpoint_identity(path), data.training_set())
    chosen = [v for v in data.split("test") if v.label == WeakLabel.MALIGNANT][:vertebrae]
    modes = {"faithful": {"faithful": True}}
    modes |= {f"batched {n}/{n}": {"steps_stochastic": n, "steps_decode": n}
              for n in map(int, steps.split(","))}  # fmt: skip
    reference: dict[str, np.ndarray] = {}
    print(f"DAE {path.name}, {len(chosen)} vertebrae of {dataset}, faithful = {FAITHFUL_STEPS}")
    print("| mode | s/vertebra | candidates/vertebra | Dice vs faithful | Instance Dice |")
    print("|---|---|---|---|---|")
    for mode, params in modes.items():
        method = HideAndSeek.from_parts(dae, classifier, **params)
        rows = []
        for v in chosen:
            seg, seconds = timed_segment(method, v)
            reference.setdefault(v.key.id, seg.labels)
            rows.append((seconds, len(seg.lesions), dice(seg.labels, reference[v.key.id]),
                         instance_dice(seg, v)))  # fmt: skip
        s, n, agree, sq = np.nanmean(np.array(rows, dtype=float), axis=0)
        print(f"| {mode} | {s:.2f} | {n:.1f} | {agree:.3f} | {sq:.3f} |")


def real_sample(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mid-sagittal slice (HU) and body mask of the authors' sample, via the in-house adapter.

    Without the adapter: the file's last axis is left-right (the authors crop it to one slice);
    its intensities are normalised to about 0–1 and are mapped linearly onto the HU window.
    """
    import nibabel as nib

    from wsbench.intensity import HU_WINDOW

    ct = nib.load(folder / "hideseek_sample_ct.nii.gz").get_fdata()
    seg = nib.load(folder / "hideseek_sample_seg.nii.gz").get_fdata() > 0
    mid = ct.shape[2] // 2
    lo, hi = HU_WINDOW
    return (lo + ct[:, :, mid] * (hi - lo)).astype(np.float32), seg[:, :, mid]


@app.command()
def figure(
    checkpoint: Annotated[Path | None, typer.Option(help="DAE checkpoint")] = None,
    dataset: Annotated[str, typer.Option(help="dataset the DAE was trained on")] = "phantom",
    real: Annotated[Path, typer.Option(help="shared real-data folder")] = ROOT.parent
    / "shared/data/real",
    out: Annotated[Path, typer.Option(help="figure file")] = ROOT
    / "docs/figures/hideseek_real_sample.png",
) -> None:
    """Overlay of Hide-and-Seek on the authors' real malignant sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.measure import find_contours

    torch.set_num_threads(1)
    path = trained_dae(checkpoint)
    from wsbench.nets.dae import DiffusionAutoencoder

    dae = DiffusionAutoencoder.load(path).eval()
    classifier = classifier_for(dae, checkpoint_identity(path), load_dataset(dataset)().prepare()
                                .training_set())  # fmt: skip
    image, body = real_sample(real)
    method = HideAndSeek.from_parts(dae, classifier, only_malignant=False)
    result = method.attribute(image[None], body[None], None)
    seg = result.segmentation(image.shape)
    labels = postprocess(seg.labels, body)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    diff = result.image - result.healthy
    panels = [(result.image, "input", "gray"), (result.healthy, "healthy edit", "gray"),
              (np.where(body, diff, 0), "input − healthy (blue: blastic)", "coolwarm_r"),
              (result.image, "candidates (Δ) and result", "gray")]  # fmt: skip
    for ax, (data, title, cmap) in zip(axes, panels, strict=True):
        limit = np.abs(data).max() if cmap == "coolwarm_r" else None
        ax.imshow(data, cmap=cmap, vmin=-limit if limit else -1, vmax=limit or 1)
        ax.set_title(title)
        ax.axis("off")
    for i, (candidate, delta) in enumerate(zip(result.candidates, result.deltas, strict=True)):
        colour = "red" if candidate.label == 1 else "blue"
        for contour in find_contours(candidate.mask.astype(float), 0.5):
            axes[3].plot(contour[:, 1], contour[:, 0], color=colour, lw=1.5 if result.kept(i)
                         else 0.6, ls="-" if result.kept(i) else ":")  # fmt: skip
        cy, cx = np.argwhere(candidate.mask).mean(axis=0)
        axes[3].text(cx, cy, f"{delta:.2f}", color=colour, fontsize=7, ha="center")
    axes[3].contour(labels > 0, [0.5], colors="yellow", linewidths=0.8)
    fig.suptitle(f"Hide-and-Seek on the authors' real sample: c(z) = {result.p_orig:.3f}, "
                 f"{sum(map(result.kept, range(len(result.candidates))))} of "
                 f"{len(result.candidates)} candidates kept (Δ ≥ {result.tau})")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
