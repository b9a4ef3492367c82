"""A PNG grid of mid-sagittal phantom slices with lesion (lytic red, blastic blue) and mimic
(yellow outline) overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsbench.contract import BLASTIC, LYTIC
from wsbench.data.volumes import SubjectVolumes
from wsbench.datasets.phantom.generate import render_subject
from wsbench.datasets.phantom.plan import MIMIC_TYPES, PhantomOptions, plan_subject

WINDOW_HU = (-250.0, 1100.0)


def mid_sagittal(subject: SubjectVolumes) -> dict[str, np.ndarray]:
    """CT, lesion and mimic maps of the mid-sagittal plane (rows superior → inferior, columns
    anterior → posterior), with the pixel aspect ratio under ``"aspect"``."""
    flip_x = subject.affine[0, 0] < 0
    flip_y = subject.affine[1, 1] < 0
    maps = {"ct": subject.ct, "lesion": subject.lesion, "mimic": subject.extra["mimic"]}
    mid = subject.ct.shape[0] // 2
    out = {}
    for name, volume in maps.items():
        plane = np.asarray(volume)[:: -1 if flip_x else 1][mid]
        plane = plane[::-1] if flip_y else plane
        out[name] = plane[::-1].T[::-1]  # (y anterior→posterior, z) → (z top→bottom, y)
    _, sy, sz = subject.spacing
    out["aspect"] = np.array(sz / sy)
    return out


def show_grid(out: Path, options: PhantomOptions, subjects: list[int]) -> Path:
    """Render ``subjects`` (indices) and save their mid-sagittal slices side by side as ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    columns = len(subjects)
    fig, axes = plt.subplots(1, columns, figsize=(2.4 * columns, 6.2), squeeze=False)
    lesion_colours = ListedColormap([(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.55), (0.1, 0.35, 1.0, 0.55)])
    for ax, index in zip(axes[0], subjects, strict=True):
        plan = plan_subject(options, index)
        slices = mid_sagittal(render_subject(plan))
        aspect = float(slices["aspect"])
        ax.imshow(slices["ct"], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect)
        lesion = slices["lesion"]
        ax.imshow(
            np.where(lesion == LYTIC, 1, np.where(lesion == BLASTIC, 2, 0)),
            cmap=lesion_colours, vmin=0, vmax=2, aspect=aspect, interpolation="nearest",
        )  # fmt: skip
        if slices["mimic"].any():
            ax.contour(slices["mimic"] > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        levels = f"{plan.vertebrae[0].level}–{plan.vertebrae[-1].level}"
        hint = plan.phenotype.value if plan.phenotype else "no metastases"
        ax.set_title(f"{plan.subject} {levels}\n{hint}", fontsize=8)
        ax.axis("off")
    names = ", ".join(MIMIC_TYPES)
    fig.suptitle(
        "Phantom mid-sagittal slices — lytic red, blastic blue, benign mimics yellow outline\n"
        f"(mimics: {names})",
        fontsize=8,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
