"""Training and quality evaluation of the diffusion autoencoder (:mod:`wsbench.nets.dae`).

Training (paper §4, A.1.2, Table 3): each step draws ``batch_size`` training vertebrae, one of
each vertebra's central five slices at random, HU → [-1, 1], Table-3 augmentations (MONAI, via
:mod:`wsbench.training`); ε-prediction MSE at a uniform timestep of the linear-β schedule
(T = 1000); Adam; EMA of the weights. No label is read, except ``healthy_only`` (the anomaly
detection baseline's model) keeps healthy vertebrae only.

Determinism: all randomness of step ``k`` (vertebrae, slices, augmentation, timesteps, noise)
comes from generators seeded with ``(seed, k)``, so a resumed run is bit-identical to an
uninterrupted one. The resume state (weights, EMA, optimiser, step) is written every
``checkpoint_every`` steps and on Ctrl-C beside the final checkpoint (``<stem>.resume``); a
finished run keeps its final state (``<stem>.state``), from which ``resume`` extends it to more
steps under the longer run's key, bit-identical to training that long at once; a log
(``<stem>.log``) records the loss. The final checkpoint holds the EMA weights only, with a model
card: command, seed, data fingerprint, wall time, and the reconstruction/latent quality.

Quality (:func:`quality_report`): SSIM/PSNR (network units, data range 2) of
``decode(stochastic_encode(x, z), z)`` on the test split's mid-sagittal slices at stated step
counts, the held-out ROC-AUC of a logistic regression on ``z_sem`` (training split,
subject-level hold-out; also for an untrained encoder, the level random features reach), how
much the decoder uses ``z_sem`` (:func:`latent_swap_hu`), and a figure (original /
reconstruction / |difference|).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score
from torch import nn

from wsbench.attribution import to_array, to_tensor
from wsbench.intensity import HU_WINDOW
from wsbench.latent_classifier import LatentClassifier, encode_slices, fit_latent_classifier
from wsbench.modelstore import ModelKey, check_key, find_model, new_model_path, write_card
from wsbench.nets.dae import DAEConfig, DiffusionAutoencoder, config_named
from wsbench.nets.device import module_device, torch_device
from wsbench.training import (
    augment_batch,
    augmentations,
    sample_slices,
    subject_holdout,
    training_progress,
)
from wsbench.types import (
    N_CENTRAL_SLICES,
    PreparedDataset,
    Split,
    TrainingSet,
    TrainingVertebra,
    WeakLabel,
)

VERSION = 1
EVAL_STEPS = (20, 20)
"""(stochastic encode, decode) DDIM steps of the quality report: Hide-and-Seek's default."""
FINAL_STATE = ".state"
"""Suffix of a finished run's full training state (weights, EMA, Adam, step), kept to extend it."""
GRAD_CLIP = 1.0
"""Gradient-norm clip of every step (DiffAE's ``grad_clip``)."""
AUC_HOLDOUT = 0.3
"""Fraction of training subjects held out for the latent AUC."""
SWAP_IMAGES = 64
"""Test slices (a seeded sample) on which :func:`latent_swap_hu` is measured."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes a trained DAE (part of its model-store key)."""

    config: str = "cpu"
    steps: int = 2500
    batch_size: int = 8
    lr: float = 4e-4
    ema_decay: float = 0.999
    seed: int = 0
    healthy_only: bool = False
    lr_decay_from: int | None = None
    """Hold ``lr`` until this step, then decay it to zero at ``steps`` along a cosine; ``None``
    keeps it constant."""

    def __post_init__(self) -> None:
        if self.lr_decay_from is not None and not 0 <= self.lr_decay_from < self.steps:
            raise ValueError(
                f"lr_decay_from={self.lr_decay_from} must lie in [0, steps={self.steps}); "
                "decay from a step the run reaches, or drop it for a constant learning rate"
            )

    @property
    def kind(self) -> str:
        """Model-store kind: ``dae`` (all training vertebrae) or ``dae-healthy``."""
        return "dae-healthy" if self.healthy_only else "dae"

    def as_dict(self) -> dict[str, Any]:
        """JSON form, with the architecture, the schedule and the intensity window.

        A constant learning rate writes no ``lr_decay_from``, so the keys of constant-rate runs
        (the shipped weights among them) are those they had before the option existed.
        """
        fields = asdict(self)
        if self.lr_decay_from is None:
            del fields["lr_decay_from"]
        return {
            **fields,
            "arch": config_named(self.config).as_dict(),
            "schedule": "linear_beta 1e-4..0.02",
            "loss": "epsilon-mse",
            "version": VERSION,
            "hu_window": list(HU_WINDOW),
        }


DEFAULTS: dict[str, TrainConfig] = {
    "paper": TrainConfig("paper", steps=200_000, batch_size=8, lr=1e-4, ema_decay=0.9999),
    "cpu": TrainConfig("cpu", steps=2500, batch_size=8, lr=4e-4, ema_decay=0.999),
    "tiny": TrainConfig("tiny", steps=20, batch_size=4, lr=1e-3, ema_decay=0.9),
}
"""Per-config defaults. ``paper``: Table 3 (batch 8, Adam 1e-4, DiffAE's EMA 0.9999); the step
budget is the user's (the paper trained 2206 epochs). ``cpu``: batch 8 (Table 3), sized for
< 50 min on two shared cores (~1 s per step there); Adam 4e-4 instead of 1e-4 (measured: ε-loss
after 100 steps 0.022 vs 0.44 on a toy set); EMA 0.999 because 0.9999 would average over more
steps than the run has."""


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """Defaults of architecture ``name`` with ``overrides`` (``None`` values ignored)."""
    config_named(name)
    return replace(DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None})


def learning_rate(train: TrainConfig, step: int) -> float:
    """Adam's learning rate at ``step`` (0-based) under ``train``'s schedule."""
    start = train.lr_decay_from
    if start is None or step < start:
        return train.lr
    return train.lr * 0.5 * (1.0 + math.cos(math.pi * (step - start) / (train.steps - start)))


def extends_schedule(shorter: dict[str, Any], longer: dict[str, Any]) -> bool:
    """Whether the run configured ``longer`` uses the learning rates of the finished run
    ``shorter`` over all of its steps: ``shorter`` held its rate and ``longer`` holds it as long."""
    decay = longer.get("lr_decay_from")
    held = shorter.get("lr_decay_from") is None
    return held and (decay is None or decay >= shorter["steps"])


def model_key(fingerprint: str, train: TrainConfig) -> ModelKey:
    """Model-store identity of a DAE trained on ``fingerprint`` with ``train``."""
    return ModelKey(train.kind, fingerprint, train.as_dict())


def training_vertebrae(training: TrainingSet, train: TrainConfig) -> list[TrainingVertebra]:
    """The vertebrae a run trains on: all, or the healthy ones for ``healthy_only``."""
    chosen = training.where(WeakLabel.HEALTHY) if train.healthy_only else training
    if not len(chosen):
        what = "healthy vertebrae" if train.healthy_only else "vertebrae"
        raise ValueError(f"training split of {training.name!r} has no {what} to train a DAE on")
    return list(chosen)


@dataclass
class Session:
    """A training run in progress: model, EMA copy, optimiser and the next step's index."""

    key: ModelKey
    train: TrainConfig
    model: DiffusionAutoencoder
    ema: DiffusionAutoencoder
    optimiser: torch.optim.Optimizer
    step: int = 0
    wall_s: float = 0.0

    def state(self) -> dict[str, Any]:
        """Everything :func:`load_session` needs (tensors and plain values only)."""
        return {
            "key": self.key.as_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "step": self.step,
            "wall_s": self.wall_s,
        }


def new_session(key: ModelKey, train: TrainConfig, device: str = "cpu") -> Session:
    """Fresh weights (seeded, drawn on the CPU whatever ``device``), their EMA copy and Adam."""
    torch.manual_seed(train.seed)
    model = DiffusionAutoencoder(config_named(train.config)).to(torch_device(device))
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimiser = torch.optim.Adam(model.parameters(), lr=train.lr)
    return Session(key, train, model, ema, optimiser)


def save_session(session: Session, path: Path) -> None:
    """Write the resume state atomically (temporary file, then rename)."""
    partial = path.with_name(path.name + ".partial")
    torch.save(session.state(), partial)
    partial.replace(path)


def load_session(
    path: Path,
    key: ModelKey,
    train: TrainConfig,
    extends: ModelKey | None = None,
    device: str = "cpu",
) -> Session:
    """Read a resume state for ``key`` onto ``device``, refusing one of another dataset or
    configuration.

    ``extends``: the state is the final one of that shorter run, continued as ``key``.
    """
    record = torch.load(path, map_location="cpu", weights_only=True)
    check_key(record["key"], extends or key, path)
    session = new_session(key, train, device)
    session.model.load_state_dict(record["model"])
    session.ema.load_state_dict(record["ema"])
    session.optimiser.load_state_dict(record["optimiser"])
    session.step, session.wall_s = int(record["step"]), float(record["wall_s"])
    return session


def extendable_run(key: ModelKey) -> tuple[Path, ModelKey] | None:
    """The final state (and key) of the longest finished run that ``key`` continues: the same
    configuration with fewer steps, whose learning rates ``key`` repeats (:func:`extends_schedule`).
    """
    schedule = ("steps", "lr_decay_from")
    rest = {name: value for name, value in key.config.items() if name not in schedule}
    found: list[tuple[int, Path, ModelKey]] = []
    for state in new_model_path(key).parent.glob(f"{key.kind}-*{FINAL_STATE}"):
        card = state.with_suffix(".json")
        record = json.loads(card.read_text()) if card.exists() else {}
        config = record.get("config", {})
        done = config.get("steps")
        same = {k: v for k, v in config.items() if k not in schedule} == rest
        same = same and record.get("dataset_fingerprint") == key.dataset_fingerprint
        shorter = isinstance(done, int) and done < key.config["steps"]
        if same and shorter and extends_schedule(config, key.config):
            found.append((done, state, ModelKey(key.kind, key.dataset_fingerprint, config)))
    if not found:
        return None
    _, state, shorter = max(found, key=lambda entry: entry[0])
    return state, shorter


def training_state_ema(path: Path) -> tuple[DiffusionAutoencoder, int]:
    """The EMA model and step count of a training state (``.resume`` or ``.state`` file)."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    config = record["key"]["config"]
    dae = DiffusionAutoencoder(DAEConfig.from_dict(config["arch"]), tuple(config["hu_window"]))
    dae.load_state_dict(record["ema"])
    return dae.eval(), int(record["step"])


def step_seed(seed: int, step: int) -> int:
    """The 32-bit seed of all randomness of one training step."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def training_batch(
    vertebrae: Sequence[TrainingVertebra], batch_size: int, seed: int
) -> torch.Tensor:
    """``(B, 1, H, W)`` augmented slices; vertebrae, slices, augmentations drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vertebrae), size=batch_size, replace=len(vertebrae) < batch_size)
    slices = sample_slices([vertebrae[i] for i in rows], rng)
    return augment_batch(slices, augmentations(seed))


def diffusion_loss(
    model: DiffusionAutoencoder, x0: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """ε-prediction MSE at uniform timesteps, conditioned on the encoder's ``z_sem`` of ``x0``.

    Timesteps and noise come from the CPU ``generator`` whatever ``x0``'s device, so a step
    draws the same numbers on every device."""
    t = torch.randint(0, model.config.timesteps, (len(x0),), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = model.scheduler.add_noise(x0, noise, t)
    return nn.functional.mse_loss(model(x_t, t, model.encode(x0)), noise)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model`` for every parameter."""
    for target, source in zip(ema.parameters(), model.parameters(), strict=True):
        target.lerp_(source, 1.0 - decay)


def train_step(session: Session, vertebrae: Sequence[TrainingVertebra]) -> float:
    """One optimisation step (randomness from ``(seed, step)``); the loss."""
    seed = step_seed(session.train.seed, session.step)
    batch = training_batch(vertebrae, session.train.batch_size, seed)
    batch = batch.to(module_device(session.model))
    session.model.train()
    for group in session.optimiser.param_groups:
        group["lr"] = learning_rate(session.train, session.step)
    loss = diffusion_loss(session.model, batch, torch.Generator().manual_seed(seed))
    session.optimiser.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(session.model.parameters(), GRAD_CLIP)
    session.optimiser.step()
    update_ema(session.ema, session.model, session.train.ema_decay)
    session.step += 1
    return float(loss.item())


def advance(
    session: Session,
    vertebrae: Sequence[TrainingVertebra],
    until: int,
    on_step: Callable[[Session, float], None] | None = None,
) -> None:
    """Train until ``session.step == until`` (calling ``on_step`` after each step)."""
    while session.step < until:
        started = time.perf_counter()
        loss = train_step(session, vertebrae)
        session.wall_s += time.perf_counter() - started
        if on_step is not None:
            on_step(session, loss)


def file_logger(path: Path) -> logging.Logger:
    """A logger appending timestamped lines to ``path``."""
    logger = logging.getLogger(f"wsbench.dae.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def interrupt_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise KeyboardInterrupt so a background run saves its resume state."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_training(
    training: TrainingSet,
    train: TrainConfig,
    resume: bool = False,
    checkpoint_every: int = 200,
    log_every: int = 25,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Path, Session]:
    """Train (or resume) on ``device`` and save the EMA checkpoint with a first card;
    ``(path, session)``.

    An existing resume state is refused without ``resume`` (so nothing is silently discarded).
    ``resume`` continues it, or else extends the longest finished shorter run of the same
    configuration (:func:`extendable_run`); with neither it is an error. Ctrl-C and SIGTERM save
    the resume state (background jobs ignore SIGINT, so stop them with ``kill <pid>``).
    """
    key = model_key(training.fingerprint, train)
    path = new_model_path(key)
    resume_path, log = path.with_suffix(".resume"), file_logger(path.with_suffix(".log"))
    if resume_path.exists() and not resume:
        raise FileExistsError(
            f"an interrupted run exists at {resume_path}; pass --resume to continue it, "
            "or delete that file to start again"
        )
    shorter = None if resume_path.exists() or not resume else extendable_run(key)
    if resume and not resume_path.exists() and shorter is None:
        raise FileNotFoundError(
            f"--resume: no interrupted run at {resume_path} and no finished shorter run of this "
            "configuration to extend; train without --resume"
        )
    if shorter is not None:
        session = load_session(shorter[0], key, train, extends=shorter[1], device=device)
        what = f"extend {shorter[1].stem}"
    else:
        if resume:
            session = load_session(resume_path, key, train, device=device)
        else:
            session = new_session(key, train, device)
        what = "resume" if resume else "start"
    vertebrae = training_vertebrae(training, train)
    log.info("%s %s on %s (%d vertebrae) from step %d to %d", what, key.stem, training.name,
             len(vertebrae), session.step, train.steps)  # fmt: skip
    window: list[float] = []
    wall_at_start = session.wall_s
    with training_progress(f"DAE {train.config}", train.steps, progress) as (bar, task):
        bar.update(task, completed=session.step)

        def on_step(s: Session, loss: float) -> None:
            window.append(loss)
            mean = float(np.mean(window[-log_every:]))
            bar.update(task, completed=s.step, description=f"DAE {train.config} loss {mean:.4f}")
            if s.step % log_every == 0 or s.step == train.steps:
                eta = (s.wall_s - wall_at_start) / len(window) * (train.steps - s.step)
                log.info("step %d/%d loss %.5f lr %.2e wall %.0fs eta %.0fs", s.step,
                         train.steps, mean, learning_rate(train, s.step - 1), s.wall_s,
                         eta)  # fmt: skip
            if s.step % checkpoint_every == 0 and s.step < train.steps:
                save_session(s, resume_path)

        previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        try:
            advance(session, vertebrae, train.steps, on_step)
        except KeyboardInterrupt:
            save_session(session, resume_path)
            log.info("interrupted at step %d; resume state %s", session.step, resume_path)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
    session.ema.save(path, {"key": key.as_dict(), "steps": session.step})
    facts = {
        "dataset": training.name,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seed": train.seed,
        "steps": session.step,
        "vertebrae": len(vertebrae),
        "wall_time_s": round(session.wall_s, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "parameters": session.model.parameter_count(),
        "weights": "EMA, fp32",
        "final_loss": round(float(np.mean(window[-log_every:])), 5) if window else None,
        "extends": shorter[1].stem if shorter else None,
    }
    write_card(path, key, f"Diffusion autoencoder ({train.kind}, config {train.config})", facts)
    save_session(session, path.with_suffix(FINAL_STATE))
    resume_path.unlink(missing_ok=True)
    log.info("saved %s", path)
    return path, session


def mid_slices(vertebrae: Sequence[Any]) -> np.ndarray:
    """Mid-sagittal HU slices ``(N, H, W)`` of prepared or training vertebrae."""
    return np.stack([v.slices[N_CENTRAL_SLICES // 2] for v in vertebrae]).astype(np.float32)


@torch.inference_mode()
def reconstruct_slices(
    dae: DiffusionAutoencoder, slices_hu: np.ndarray, steps: tuple[int, int], batch_size: int = 64
) -> np.ndarray:
    """``decode(stochastic_encode(x, z), z)`` of HU slices, returned in network units."""
    x = to_tensor(dae.to_unit(slices_hu), module_device(dae))
    out = [dae.reconstruct(part, *steps) for part in x.split(batch_size)]
    return torch.cat(out)[:, 0].float().cpu().numpy()


def report_sample(slices: np.ndarray, seed: int) -> np.ndarray:
    """The quality report's seeded sample of :data:`SWAP_IMAGES` of ``slices`` (test slices)."""
    return slices[np.random.default_rng(seed).permutation(len(slices))[:SWAP_IMAGES]]


@torch.inference_mode()
def latent_swap_hu(
    dae: DiffusionAutoencoder, slices_hu: np.ndarray, steps: tuple[int, int]
) -> float:
    """How much the decoder uses ``z_sem``: mean |HU| change of ``decode(x_T, z)`` when each
    slice's ``z`` is replaced by the next slice's, ``x_T`` (its own stochastic code) fixed.

    Zero means the decoder ignores ``z_sem`` (an edit of ``z`` cannot change the image).
    """
    x = to_tensor(dae.to_unit(slices_hu), module_device(dae))
    z = dae.encode(x)
    x_t = dae.stochastic_encode(x, z, steps[0])
    own = to_array(dae.decode(x_t, z, steps[1])[:, 0])
    swapped = to_array(dae.decode(x_t, z.roll(1, dims=0), steps[1])[:, 0])
    return float(np.abs(dae.to_hu(swapped) - dae.to_hu(own)).mean())


def similarity(original: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image SSIM and PSNR of ``(N, H, W)`` arrays in network units (data range 2)."""
    ssim = [
        structural_similarity(a, b, data_range=2.0) for a, b in zip(original, other, strict=True)
    ]
    psnr = [
        peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in zip(original, other, strict=True)
    ]
    return np.asarray(ssim), np.asarray(psnr)


def latent_auc_split(
    training: TrainingSet, seed: int
) -> tuple[list[TrainingVertebra], list[TrainingVertebra]]:
    """The labelled training vertebrae ``(fitted, held out)`` of the latent AUC (seeded,
    :data:`AUC_HOLDOUT` of the subjects held out whole)."""
    labelled = training.labelled()
    fit_rows, held_rows = subject_holdout(labelled, AUC_HOLDOUT, seed)
    return [labelled[i] for i in fit_rows], [labelled[i] for i in held_rows]


def holdout_fit(
    x_fit: np.ndarray,
    x_held: np.ndarray,
    fit: Sequence[TrainingVertebra],
    held: Sequence[TrainingVertebra],
) -> tuple[LatentClassifier, float]:
    """The latent-classifier recipe fitted on feature rows ``x_fit`` (every slice of ``fit``, in
    order) and its ROC-AUC on ``x_held`` (one row per ``held`` vertebra's mid slice)."""
    per = len(fit[0].slices)
    labels = np.repeat(TrainingSet("", "", fit).labels(), per)
    classifier = fit_latent_classifier(x_fit, labels, np.repeat(np.arange(len(fit)), per))
    y_held = TrainingSet("", "", held).labels()
    p_held = classifier.probability(x_held)
    auc = roc_auc_score(y_held, p_held) if len(set(y_held.tolist())) == 2 else float("nan")
    return classifier, float(auc)


def holdout_latents(
    dae: DiffusionAutoencoder, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[np.ndarray, np.ndarray]:
    """``z_sem`` of every slice of ``fit`` (in order) and of ``held``'s mid slices."""
    z_fit = encode_slices(dae, np.concatenate([v.slices for v in fit]))
    return z_fit, encode_slices(dae, mid_slices(held))


def holdout_classifier(
    dae: DiffusionAutoencoder, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[LatentClassifier, float]:
    """The latent classifier fitted on ``fit``'s slices and its ROC-AUC on ``held``'s mid slices."""
    return holdout_fit(*holdout_latents(dae, fit, held), fit, held)


def untrained_twin(dae: DiffusionAutoencoder, seed: int) -> DiffusionAutoencoder:
    """A freshly initialised DAE of ``dae``'s config and HU window (weights from ``seed``)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DiffusionAutoencoder(dae.config, dae.hu_window).to(module_device(dae)).eval()


def latent_auc(dae: DiffusionAutoencoder, training: TrainingSet, seed: int) -> dict[str, Any]:
    """ROC-AUC of the latent logistic regression on held-out training subjects, and the same
    for an untrained encoder (``latent_auc_untrained``, the chance level of random features).

    Fitted (standardised, C by grouped CV: :func:`wsbench.latent_classifier.fit_latent_classifier`)
    on all central slices of the kept subjects' labelled vertebrae, scored on the held-out
    vertebrae's mid-sagittal slices. Too few labelled subjects give ``latent_auc: None`` and the
    reason (``latent_auc_error``) instead of a number.
    """
    try:
        fit, held = latent_auc_split(training, seed)
        classifier, auc = holdout_classifier(dae, fit, held)
    except ValueError as exc:
        return {"latent_auc": None, "latent_auc_error": str(exc)}
    _, untrained = holdout_classifier(untrained_twin(dae, seed), fit, held)
    return {
        "latent_auc": round(auc, 4),
        "latent_auc_untrained": round(untrained, 4),
        "latent_auc_n_fit": len(fit),
        "latent_auc_n_heldout": len(held),
        "latent_auc_heldout_malignant": int(TrainingSet("", "", held).labels().sum()),
        "latent_C": classifier.C,
    }


def reconstruction_figure(
    originals: np.ndarray, recons: np.ndarray, titles: Sequence[str], path: Path
) -> None:
    """Rows of original / reconstruction / |difference| (network units) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows), squeeze=False)
    for row, (a, b, title) in enumerate(zip(originals, recons, titles, strict=True)):
        panels = [(a, "gray", (-1, 1)), (b, "gray", (-1, 1)), (np.abs(a - b), "magma", (0, 0.5))]
        for col, (img, cmap, (lo, hi)) in enumerate(panels):
            axes[row, col].imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            axes[row, col].set_axis_off()
        axes[row, 0].text(0, 1.02, title, fontsize=7, transform=axes[row, 0].transAxes)
    for col, name in enumerate(["original", "reconstruction", "|difference| (0-0.5)"]):
        axes[0, col].set_title(name, fontsize=8, pad=14)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_report(
    dae: DiffusionAutoencoder,
    prepared: PreparedDataset,
    steps: tuple[int, int] = EVAL_STEPS,
    seed: int = 0,
    figure: Path | None = None,
    figure_rows: int = 6,
) -> dict[str, Any]:
    """Reconstruction SSIM/PSNR on the test split and the latent AUC (see module docstring)."""
    test = prepared.split(Split.TEST)
    if not test:
        raise ValueError(f"dataset {prepared.name!r} has no test split to evaluate the DAE on")
    started = time.perf_counter()
    slices = mid_slices(test)
    recon = reconstruct_slices(dae, slices, steps)
    original = dae.to_unit(slices)
    ssim, psnr = similarity(original, recon)
    seconds = time.perf_counter() - started
    malignant = np.array([v.label == WeakLabel.MALIGNANT for v in test])
    report: dict[str, Any] = {
        "eval_steps_stochastic_decode": list(steps),
        "test_n": len(test),
        "ssim_mean": round(float(ssim.mean()), 4),
        "ssim_sd": round(float(ssim.std()), 4),
        "psnr_mean_db": round(float(psnr.mean()), 2),
        "psnr_sd_db": round(float(psnr.std()), 2),
        "ssim_mean_healthy": round(float(ssim[~malignant].mean()), 4)
        if (~malignant).any()
        else None,
        "ssim_mean_malignant": round(float(ssim[malignant].mean()), 4) if malignant.any() else None,
        "eval_seconds_per_image": round(seconds / len(test), 3),
    }
    report["latent_swap_hu"] = round(latent_swap_hu(dae, report_sample(slices, seed), steps), 2)
    report.update(latent_auc(dae, prepared.training_set(), seed))
    if figure is not None:
        picks = np.random.default_rng(seed).choice(len(test), min(figure_rows, len(test)), False)
        titles = [f"{test[i].key.id} {test[i].label.value if test[i].label else ''} "
                  f"SSIM {ssim[i]:.3f}" for i in picks]  # fmt: skip
        reconstruction_figure(original[picks], recon[picks], titles, figure)
        report["figure"] = figure.name
    return report


def evaluate_and_card(
    path: Path, prepared: PreparedDataset, steps: tuple[int, int], seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Run :func:`quality_report` on ``device`` on the checkpoint at ``path`` and add it to its
    model card."""
    dae = DiffusionAutoencoder.load(path, device=device)
    report = quality_report(dae, prepared, steps, seed, figure=path.with_suffix(".png"))
    card = path.with_suffix(".json")
    record = json.loads(card.read_text())
    key = ModelKey(record["kind"], record["dataset_fingerprint"], record["config"])
    facts = {k: v for k, v in record.items() if k not in ("title", *key.as_dict())}
    write_card(path, key, record["title"], {**facts, **report})
    return report


def ensure_dae(
    prepared: PreparedDataset,
    train: TrainConfig,
    resume: bool = False,
    evaluate_steps: tuple[int, int] = EVAL_STEPS,
    progress: bool = True,
    checkpoint_every: int = 200,
    reevaluate: bool = False,
    device: str = "cpu",
) -> tuple[Path, bool]:
    """The DAE for ``prepared``'s training split and ``train``: found, or trained; evaluated.

    The quality report is added to the card when the card lacks it (e.g. after a crash in the
    evaluation), has other step counts, or ``reevaluate`` asks for it (the report gained fields).
    Training and evaluation run on ``device``. Returns ``(checkpoint, newly trained)``.
    """
    training = prepared.training_set()
    stored = find_model(model_key(training.fingerprint, train))
    trained = stored is None
    if stored is None:
        stored, _ = run_training(
            training, train, resume, checkpoint_every, progress=progress, device=device
        )
    card = json.loads(stored.with_suffix(".json").read_text())
    stale = card.get("eval_steps_stochastic_decode") != list(evaluate_steps)
    if reevaluate or "ssim_mean" not in card or stale:
        evaluate_and_card(stored, prepared, evaluate_steps, train.seed, device)
    return stored, trained
