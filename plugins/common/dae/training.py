"""Training of the diffusion autoencoder (:mod:`wsbench.plugins.common.dae.network`).

Training (paper §4, A.1.2, Table 3): each step draws ``batch_size`` training vertebrae, one of
each vertebra's central five slices at random, HU → [-1, 1], Table-3 augmentations (MONAI, via
:mod:`wsbench.models.training`); ε-prediction MSE at a uniform timestep of the linear-β schedule
(T = 1000); Adam with an optional cosine decay (``LambdaLR``); an EMA of the weights
(``AveragedModel``). No label is read, except ``healthy_only`` (the anomaly detection baseline's
model) keeps healthy vertebrae only.

Determinism: all randomness of step ``k`` (vertebrae, slices, augmentation, timesteps, noise)
comes from generators seeded with ``(seed, k)``, so a resumed run is bit-identical to an
uninterrupted one. The resume state (weights, EMA, optimiser, schedule, step) is written every
``checkpoint_every`` steps and on Ctrl-C beside the final checkpoint (``<stem>.resume``); a
finished run keeps its final state (``<stem>.state``), from which ``resume`` extends it to more
steps under the longer run's key, bit-identical to training that long at once; a log
(``<stem>.log``) records the loss. The final checkpoint holds the EMA weights only, with a model
card: command, seed, data fingerprint, wall time, and the quality report
(:mod:`wsbench.plugins.common.dae.quality`).

Under ``torchrun`` the processes share the run (:mod:`wsbench.plugins.common.dae.distributed`):
each trains on its rows of the step's global batch, DDP averages the gradients, and rank 0 alone
writes the resume states, the log, the checkpoint, its card and quality report.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from wsbench.api import (
    HU_WINDOW,
    ModelKey,
    ModelStore,
    TrainingSet,
    TrainingVertebra,
    WeakLabel,
    atomic_path,
    augment_batch,
    augmentations,
    load_weights,
    module_device,
    progress_bar,
    read_card,
    sample_slices,
    torch_device,
    write_card,
)
from wsbench.plugins.common.dae.distributed import (
    Replica,
    is_main_process,
    process_group,
    rank_device,
    torchrun_ranks,
)
from wsbench.plugins.common.dae.network import DAEConfig, DiffusionAutoencoder, config_named
from wsbench.plugins.common.dae.quality import EVAL_STEPS, evaluate_and_card

VERSION = 1
FINAL_STATE = ".state"
"""Suffix of a finished run's full training state (weights, EMA, Adam, step), kept to extend it."""
GRAD_CLIP = 1.0
"""Gradient-norm clip of every step (DiffAE's ``grad_clip``)."""
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
"""Training precisions: the autocast dtype of the forward pass and loss (``None``: float32)."""


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
    precision: str = "fp32"
    """Arithmetic of the forward pass and loss: ``fp32``, or ``bf16`` (``torch.autocast``; the
    weights, gradients, Adam and EMA stay float32)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r} is not a training precision; use "
                f"{' or '.join(PRECISIONS)}"
            )
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

        A constant learning rate writes no ``lr_decay_from`` and float32 training no
        ``precision``, so the keys of such runs (the shipped weights among them) are those they
        had before the options existed.
        """
        fields = asdict(self)
        if self.lr_decay_from is None:
            del fields["lr_decay_from"]
        if self.precision == "fp32":
            del fields["precision"]
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
    "gpu": TrainConfig("gpu", steps=20_000, batch_size=64, lr=1e-4, ema_decay=0.999),
    "cpu": TrainConfig("cpu", steps=2500, batch_size=8, lr=4e-4, ema_decay=0.999),
    "tiny": TrainConfig("tiny", steps=20, batch_size=4, lr=1e-3, ema_decay=0.9),
}
"""Per-config defaults. ``paper``: Table 3 (batch 8, Adam 1e-4, DiffAE's EMA 0.9999); the step
budget is the user's (the paper trained 2206 epochs). ``gpu``: batch 64 and Adam 1e-4 of the
authors' 64×64 template; 20 000 steps see 1.28 M slices, six times the shipped ``cpu`` recipe;
EMA 0.999, as for ``cpu``, so that a run of a few thousand steps is not its initial weights.
``cpu``: batch 8 (Table 3), sized for
< 50 min on two shared cores (~1 s per step there); Adam 4e-4 instead of 1e-4 (measured: ε-loss
after 100 steps 0.022 vs 0.44 on a toy set); EMA 0.999 because 0.9999 would average over more
steps than the run has."""


def train_config(name: str, **overrides: Any) -> TrainConfig:
    """Defaults of architecture ``name`` with ``overrides`` (``None`` values ignored)."""
    config_named(name)
    return replace(DEFAULTS[name], **{k: v for k, v in overrides.items() if v is not None})


def lr_factor(train: TrainConfig, step: int) -> float:
    """The multiple of ``train.lr`` that Adam uses at ``step`` (0-based): 1 until
    ``lr_decay_from``, then a cosine down to 0 at ``steps``."""
    start = train.lr_decay_from
    if start is None or step < start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - start) / (train.steps - start)))


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
    """A training run in progress: model, its EMA, optimiser, schedule and the next step."""

    key: ModelKey
    train: TrainConfig
    model: DiffusionAutoencoder
    ema: AveragedModel
    optimiser: torch.optim.Optimizer
    schedule: LambdaLR
    step: int = 0
    wall_s: float = 0.0
    replica: Replica | None = None
    """This process's part of a torchrun job; ``None`` when one process trains alone."""

    @property
    def averaged(self) -> DiffusionAutoencoder:
        """The EMA weights as a DAE (what the final checkpoint holds)."""
        return self.ema.module

    def state(self) -> dict[str, Any]:
        """Everything :func:`load_session` needs (tensors and plain values only)."""
        return {
            "key": self.key.as_dict(),
            "model": self.model.state_dict(),
            "ema": self.averaged.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "schedule": self.schedule.state_dict(),
            "step": self.step,
            "wall_s": self.wall_s,
        }


def exponential_average(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model``'s parameters that starts from its current weights: every update is
    ``ema ← decay · ema + (1 − decay) · model`` (DiffAE's EMA; ``AveragedModel`` would copy the
    model on its first update, so the initial weights are counted as that first average)."""
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    ema.n_averaged.fill_(1)
    return ema.requires_grad_(False).eval()


def new_session(key: ModelKey, train: TrainConfig, device: str = "cpu") -> Session:
    """Fresh weights (seeded, drawn on the CPU whatever ``device``), their EMA, Adam and its
    learning-rate schedule (:func:`lr_factor`)."""
    torch.manual_seed(train.seed)
    model = DiffusionAutoencoder(config_named(train.config)).to(torch_device(device))
    optimiser = torch.optim.Adam(model.parameters(), lr=train.lr)
    schedule = LambdaLR(optimiser, lambda step: lr_factor(train, step))
    return Session(key, train, model, exponential_average(model, train.ema_decay), optimiser,
                   schedule)  # fmt: skip


def save_session(session: Session, path: Path) -> None:
    """Write the resume state atomically."""
    with atomic_path(path) as partial:
        torch.save(session.state(), partial)


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
    record = load_weights(path, "DAE training state")
    (extends or key).check(record["key"], path)
    session = new_session(key, train, device)
    session.model.load_state_dict(record["model"])
    session.averaged.load_state_dict(record["ema"])
    session.optimiser.load_state_dict(record["optimiser"])
    session.schedule.load_state_dict(record["schedule"])
    session.step, session.wall_s = int(record["step"]), float(record["wall_s"])
    return session


def extendable_run(key: ModelKey, store: ModelStore) -> tuple[Path, ModelKey] | None:
    """The final state (and key) of the longest finished run that ``key`` continues: the same
    configuration with fewer steps, whose learning rates ``key`` repeats (:func:`extends_schedule`).
    """
    schedule = ("steps", "lr_decay_from")
    rest = {name: value for name, value in key.config.items() if name not in schedule}
    found: list[tuple[int, Path, ModelKey]] = []
    for state in store.cache.glob(f"{key.kind}-*{FINAL_STATE}"):
        record = read_card(state)
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
    record = load_weights(path, "DAE training state")
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


def diffusion_draws(
    x0: torch.Tensor, timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform timesteps ``(B,)`` and Gaussian noise shaped like ``x0``, on the CPU.

    They come from the CPU ``generator`` whatever ``x0``'s device, so a step draws the same
    numbers on every device and for every share of its batch."""
    t = torch.randint(0, timesteps, (len(x0),), generator=generator)
    return t, torch.randn(x0.shape, generator=generator)


def denoising_loss(
    model: DiffusionAutoencoder, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """ε-prediction MSE of ``x0`` noised with ``noise`` to timesteps ``t``, conditioned on the
    encoder's ``z_sem`` of ``x0``."""
    x_t = model.scheduler.add_noise(x0, noise, t)
    return nn.functional.mse_loss(model(x_t, t, model.encode(x0)), noise)


class DenoisingLoss(nn.Module):
    """:func:`denoising_loss` of a DAE as a module: what DistributedDataParallel wraps."""

    def __init__(self, model: DiffusionAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return denoising_loss(self.model, x0, t, noise)


def diffusion_loss(
    model: DiffusionAutoencoder, x0: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """ε-prediction MSE at uniform timesteps (:func:`diffusion_draws`), conditioned on the
    encoder's ``z_sem`` of ``x0``."""
    t, noise = diffusion_draws(x0, model.config.timesteps, generator)
    return denoising_loss(model, x0, t.to(x0.device), noise.to(x0.device))


def replica_loss(replica: Replica, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The loss of this process's rows of the step's global ``batch``, with the timesteps and
    noise a single process would draw for those rows."""
    model = replica.loss.module.model
    t, noise = diffusion_draws(batch, model.config.timesteps, generator)
    rows, device = replica.ranks.rows(len(batch)), module_device(model)
    return replica.loss(*(tensor[rows].to(device) for tensor in (batch, t, noise)))


def forward_precision(precision: str, device: torch.device) -> torch.autocast | nullcontext[None]:
    """The context the forward pass and loss run in: ``torch.autocast`` to bfloat16 on
    ``device`` for ``bf16``, nothing for ``fp32``."""
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def train_step(session: Session, vertebrae: Sequence[TrainingVertebra]) -> float:
    """One optimisation step (randomness from ``(seed, step)``); the loss of the global batch."""
    seed = step_seed(session.train.seed, session.step)
    batch = training_batch(vertebrae, session.train.batch_size, seed)
    generator = torch.Generator().manual_seed(seed)
    session.model.train()
    with forward_precision(session.train.precision, module_device(session.model)):
        if session.replica is None:
            loss = diffusion_loss(session.model, batch.to(module_device(session.model)), generator)
        else:
            loss = replica_loss(session.replica, batch, generator)
    session.optimiser.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(session.model.parameters(), GRAD_CLIP)
    session.optimiser.step()
    session.schedule.step()
    session.ema.update_parameters(session.model)
    session.step += 1
    return float(loss.item()) if session.replica is None else session.replica.mean(loss)


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


def file_logger(path: Path | None) -> logging.Logger:
    """A logger appending timestamped lines to ``path``; for ``None`` one that writes nothing
    (the processes of a torchrun job other than rank 0)."""
    logger = logging.getLogger(f"wsbench.dae.{path}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if path is None and not logger.handlers:
        logger.addHandler(logging.NullHandler())
    if path is not None and not logger.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def interrupt_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: raise KeyboardInterrupt so a background run saves its resume state."""
    raise KeyboardInterrupt(f"signal {signum}")


def open_session(
    key: ModelKey, train: TrainConfig, store: ModelStore, resume: bool, device: str
) -> tuple[Session, str, ModelKey | None]:
    """The session a run starts from: new, the interrupted one (``resume``), or the longest
    finished shorter run it extends; with what it does (for the log) and the run it extends.

    An existing resume state is refused without ``resume`` (so nothing is silently discarded);
    ``resume`` with nothing to continue is an error.
    """
    resume_path = store.new_path(key).with_suffix(".resume")
    if resume_path.exists() and not resume:
        raise FileExistsError(
            f"an interrupted run exists at {resume_path}; pass --resume to continue it, "
            "or delete that file to start again"
        )
    shorter = None if resume_path.exists() or not resume else extendable_run(key, store)
    if shorter is not None:
        session = load_session(shorter[0], key, train, extends=shorter[1], device=device)
        return session, f"extend {shorter[1].stem}", shorter[1]
    if not resume:
        return new_session(key, train, device), "start", None
    if not resume_path.exists():
        raise FileNotFoundError(
            f"--resume: no interrupted run at {resume_path} and no finished shorter run of this "
            "configuration to extend; train without --resume"
        )
    return load_session(resume_path, key, train, device=device), "resume", None


def run_training(
    training: TrainingSet,
    train: TrainConfig,
    store: ModelStore,
    resume: bool = False,
    checkpoint_every: int = 200,
    log_every: int = 25,
    progress: bool = True,
    device: str = "cpu",
) -> tuple[Path, Session]:
    """Train (or resume) on ``device`` and save the EMA checkpoint with a first card into
    ``store``'s cache; ``(path, session)``.

    ``resume`` continues an interrupted run, or else extends the longest finished shorter run of
    the same configuration (:func:`open_session`). Ctrl-C and SIGTERM save the resume state
    (background jobs ignore SIGINT, so stop them with ``kill <pid>``).

    Under torchrun every process trains its share of each global batch of ``batch_size`` with
    DDP, on ``cuda:LOCAL_RANK`` when ``device`` is ``cuda``; only rank 0 writes files.
    """
    ranks = torchrun_ranks()
    if ranks is not None:
        ranks.check_batch(train.batch_size)
    own_device = device if ranks is None else rank_device(device, ranks)
    main = ranks is None or ranks.main
    key = model_key(training.fingerprint, train)
    path = store.new_path(key)
    resume_path = path.with_suffix(".resume")
    log = file_logger(path.with_suffix(".log") if main else None)
    vertebrae = training_vertebrae(training, train)
    window: list[float] = []
    with nullcontext() if ranks is None else process_group(ranks, own_device):
        session, what, extends = open_session(key, train, store, resume, own_device)
        if ranks is not None:
            session.replica = Replica.of(DenoisingLoss(session.model), ranks)
        log.info("%s %s on %s (%d vertebrae) from step %d to %d", what, key.stem, training.name,
                 len(vertebrae), session.step, train.steps)  # fmt: skip
        wall_at_start = session.wall_s
        with progress_bar(progress and main) as bar:
            task = bar.add_task(f"DAE {train.config}", total=train.steps, completed=session.step)

            def on_step(s: Session, loss: float) -> None:
                window.append(loss)
                mean = float(np.mean(window[-log_every:]))
                description = f"DAE {train.config} loss {mean:.4f}"
                bar.update(task, completed=s.step, description=description)
                if s.step % log_every == 0 or s.step == train.steps:
                    eta = (s.wall_s - wall_at_start) / len(window) * (train.steps - s.step)
                    log.info("step %d/%d loss %.5f lr %.2e wall %.0fs eta %.0fs", s.step,
                             train.steps, mean, train.lr * lr_factor(train, s.step - 1),
                             s.wall_s, eta)  # fmt: skip
                if main and s.step % checkpoint_every == 0 and s.step < train.steps:
                    save_session(s, resume_path)

            previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
            try:
                advance(session, vertebrae, train.steps, on_step)
            except KeyboardInterrupt:
                if main:
                    save_session(session, resume_path)
                log.info("interrupted at step %d; resume state %s", session.step, resume_path)
                raise
            finally:
                signal.signal(signal.SIGTERM, previous)
    session.replica = None
    if not main:
        return path, session
    session.averaged.save(path, {"key": key.as_dict(), "steps": session.step})
    facts = {
        "dataset": training.name,
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "seed": train.seed,
        "steps": session.step,
        "vertebrae": len(vertebrae),
        "wall_time_s": round(session.wall_s, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        **({} if ranks is None else {"processes": ranks.world_size}),
        "parameters": session.model.parameter_count(),
        "weights": "EMA",
        "final_loss": round(float(np.mean(window[-log_every:])), 5) if window else None,
        "extends": extends.stem if extends else None,
    }
    write_card(path, key, f"Diffusion autoencoder ({train.kind}, config {train.config})", facts)
    save_session(session, path.with_suffix(FINAL_STATE))
    resume_path.unlink(missing_ok=True)
    log.info("saved %s", path)
    return path, session


def ensure_dae(
    training: TrainingSet,
    train: TrainConfig,
    store: ModelStore,
    resume: bool = False,
    evaluate_steps: tuple[int, int] = EVAL_STEPS,
    progress: bool = True,
    checkpoint_every: int = 200,
    reevaluate: bool = False,
    device: str = "cpu",
) -> tuple[Path, bool]:
    """The DAE of ``train`` for this training set: found in ``store``, or trained; evaluated.

    The quality report is added to the card of a model in the user cache when the card lacks it
    (e.g. after a crash in the evaluation), has other step counts, or ``reevaluate`` asks for it
    (the report gained fields); shipped models and their cards are read-only. Training and
    evaluation run on ``device``; under torchrun rank 0 alone evaluates. Returns ``(checkpoint,
    newly trained)``.
    """
    key = model_key(training.fingerprint, train)
    stored = store.find(key.kind, key.dataset_fingerprint, key.config)
    trained = stored is None
    if stored is None:
        stored, _ = run_training(
            training, train, store, resume, checkpoint_every, progress=progress, device=device
        )
    if not is_main_process():
        return stored, trained  # rank 0 writes the quality report
    card = read_card(stored)
    stale = card.get("eval_steps_stochastic_decode") != list(evaluate_steps)
    if stored.parent == store.cache and (reevaluate or "ssim_mean" not in card or stale):
        evaluate_and_card(stored, training, evaluate_steps, train.seed, device)
    return stored, trained
