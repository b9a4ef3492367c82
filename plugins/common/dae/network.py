"""Diffusion autoencoder (DAE) after Preechakul et al. 2022: the generative core of Hide-and-Seek
and of the anomaly-detection baseline.

A semantic encoder maps a slice to ``z_sem`` (512-d by default); a noise-prediction UNet predicts
ε from ``(x_t, t, z_sem)``. As in DiffAE, every residual block of the UNet is conditioned by
adaptive group normalisation: ``h = GN(h) · (1 + s_t) + b_t`` with scale and shift from the time
embedding, then ``h = h · (1 + s_z)`` with a scale from ``z_sem``. Sampling and its inversion use
MONAI's :class:`~monai.networks.schedulers.DDIMScheduler` (linear β, T = 1000, η = 0):

* grid of ``n`` steps: ``t_k = k · (T // n)`` for ``k = 0 … n−1`` — the stride MONAI's ``step`` and
  ``reversed_step`` use (``set_timesteps`` builds a ``linspace`` grid in MONAI ≥ 1.4 whose spacing
  does not match that stride, so it is not used to pick timesteps);
* :meth:`DiffusionAutoencoder.decode`: ``step`` at ``t_{n−1} … t_0``; the last one lands on the
  clean level (``set_alpha_to_one``);
* :meth:`DiffusionAutoencoder.stochastic_encode`: the exact mirror — one DDIM step from the clean
  level to ``ᾱ(t_0)`` (``reversed_step`` can only start from a grid timestep), then
  ``reversed_step`` at ``t_0 … t_{n−2}``. For a noise predictor that does not depend on ``x_t``
  the two are exact inverses; no ``x_0`` clipping, so nothing breaks that symmetry.

Images are ``(B, 1, H, W)`` in network units ([-1, 1], :mod:`wsbench.data.intensity`); the HU window
is stored with the model. Configs: ``paper`` (Table 3, for a GPU), ``gpu`` (the authors'
released template, for one GPU), ``cpu`` (a few million
parameters, trained here on two cores) and ``tiny`` (tests).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.schedulers import DDIMScheduler
from torch import nn

from wsbench.api import HU_WINDOW, hu_to_unit, load_weights, torch_device, unit_to_hu

FORMAT = "wsbench-dae"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DAEConfig:
    """Architecture of a diffusion autoencoder (stored in, and checked against, checkpoints)."""

    name: str
    base_channels: int
    unet_mults: tuple[int, ...]
    encoder_mults: tuple[int, ...]
    res_blocks: int
    attention_levels: tuple[int, ...]
    z_dim: int = 512
    norm_groups: int = 32
    heads: int = 4
    timesteps: int = 1000
    image_size: int = 64
    zero_init: bool = True
    """Start residual branches and the output at zero (DiffAE); ``tiny`` does not, so that an
    untrained test model's ε depends on ``x_t``, ``t`` and ``z_sem``."""

    def as_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> DAEConfig:
        """Inverse of :meth:`as_dict`."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()
                      if k in names})  # fmt: skip


CONFIGS: dict[str, DAEConfig] = {
    "paper": DAEConfig("paper", 128, (1, 2, 4, 8, 8), (1, 2, 4, 8, 8, 8), 2, (2,)),
    "gpu": DAEConfig("gpu", 64, (1, 2, 4, 8), (1, 2, 4, 8, 8), 2, (2,)),
    "cpu": DAEConfig("cpu", 24, (1, 2, 4, 4), (1, 2, 4, 8, 8), 1, (3,), norm_groups=8),
    "tiny": DAEConfig(
        "tiny",
        8,
        (1, 2),
        (1, 2),
        1,
        (1,),
        z_dim=16,
        norm_groups=4,
        heads=2,
        image_size=16,
        zero_init=False,
    ),
}
"""Named configs. ``paper``: paper Table 3 (attention at 16×16 as in DiffAE's 64×64 model).
``gpu``: the authors' released 64×64 template (64 base channels, UNet (1,2,4,8), encoder
(1,2,4,8,8), two blocks per level, attention at 16×16): a single GPU trains it in hours.
``cpu``: 3.0 M-parameter UNet + 1.9 M encoder, batch-16 step ≈ 0.45 s on two idle cores."""


def config_named(name: str) -> DAEConfig:
    """The config called ``name`` (ValueError listing the known names otherwise)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown DAE config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def zero_init(module: nn.Module) -> nn.Module:
    """``module`` with all parameters set to zero (residual branches start as identity)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class ResBlock(nn.Module):
    """Residual block; with ``time_dim``/``z_dim`` it is conditioned by adaptive group norm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        groups: int,
        time_dim: int = 0,
        z_dim: int = 0,
        zero: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if zero:
            zero_init(self.conv2)
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * c_out)) if time_dim else None
        self.cond = nn.Sequential(nn.SiLU(), nn.Linear(z_dim, c_out)) if z_dim else None
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, t_emb: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.norm2(h)
        if self.time is not None:
            scale, shift = self.time(t_emb)[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        if self.cond is not None:
            h = h * (1 + self.cond(z)[:, :, None, None])
        return self.skip(x) + self.conv2(self.act(h))


class Attention(nn.Module):
    """Pre-norm spatial multi-head self-attention with a residual connection.

    (torch's ``MultiheadAttention``: MONAI's ``SABlock`` needs ``einops``, not a dependency.)
    """

    def __init__(self, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Stage(nn.Module):
    """A residual block optionally followed by attention, passing the conditioning along."""

    def __init__(self, block: ResBlock, attention: Attention | None) -> None:
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, x, t_emb=None, z=None):
        x = self.block(x, t_emb, z)
        return x if self.attention is None else self.attention(x)


def downsample(channels: int) -> nn.Module:
    """Strided 3×3 convolution halving the resolution."""
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 then a 3×3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class SemanticEncoder(nn.Module):
    """CNN ``(B, 1, H, W) → z_sem (B, z_dim)``: residual stages, global average pool, linear."""

    def __init__(self, config: DAEConfig) -> None:
        super().__init__()
        g, ch = config.norm_groups, config.base_channels
        layers: list[nn.Module] = [nn.Conv2d(1, ch, 3, padding=1)]
        for level, mult in enumerate(config.encoder_mults):
            for _ in range(config.res_blocks):
                layers.append(ResBlock(ch, config.base_channels * mult, g, zero=config.zero_init))
                ch = config.base_channels * mult
            if level < len(config.encoder_mults) - 1:
                layers.append(downsample(ch))
        layers += [nn.GroupNorm(min(g, ch), ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch, config.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConditionalUNet(nn.Module):
    """ε-prediction UNet ``(x_t, t, z_sem) → ε`` with AdaGN conditioning in every block."""

    def __init__(self, config: DAEConfig) -> None:
        super().__init__()
        g, base, heads = config.norm_groups, config.base_channels, config.heads
        self.base = base
        time_dim = 4 * base
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        cond = {"time_dim": time_dim, "z_dim": config.z_dim, "zero": config.zero_init}

        def stage(c_in: int, c_out: int, level: int) -> Stage:
            attn = Attention(c_out, g, heads) if level in config.attention_levels else None
            return Stage(ResBlock(c_in, c_out, g, **cond), attn)

        self.inp = nn.Conv2d(1, base, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [base], base
        last = len(config.unet_mults) - 1
        for level, mult in enumerate(config.unet_mults):
            for _ in range(config.res_blocks):
                self.down.append(stage(ch, base * mult, level))
                ch = base * mult
                skips.append(ch)
            if level < last:
                self.down.append(downsample(ch))
                skips.append(ch)
        self.middle = nn.ModuleList(
            [Stage(ResBlock(ch, ch, g, **cond), Attention(ch, g, heads)),
             Stage(ResBlock(ch, ch, g, **cond), None)]
        )  # fmt: skip
        self.up = nn.ModuleList()
        for level in reversed(range(len(config.unet_mults))):
            for _ in range(config.res_blocks + 1):
                self.up.append(stage(ch + skips.pop(), base * config.unet_mults[level], level))
                ch = base * config.unet_mults[level]
            if level > 0:
                self.up.append(Upsample(ch))
        self.out = nn.Sequential(
            nn.GroupNorm(min(g, ch), ch), nn.SiLU(), nn.Conv2d(ch, 1, 3, padding=1)
        )
        if config.zero_init:
            zero_init(self.out[-1])

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t_emb = self.time_mlp(get_timestep_embedding(t, self.base))
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, t_emb, z) if isinstance(layer, Stage) else layer(h)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, t_emb, z)
        for layer in self.up:
            if isinstance(layer, Stage):
                h = layer(torch.cat([h, hs.pop()], dim=1), t_emb, z)
            else:
                h = layer(h)
        return self.out(h)


def make_scheduler(timesteps: int) -> DDIMScheduler:
    """MONAI DDIM with linear β (1e-4 … 0.02), no clipping, clean final level."""
    return DDIMScheduler(
        num_train_timesteps=timesteps,
        schedule="linear_beta",
        clip_sample=False,
        set_alpha_to_one=True,
    )


class DiffusionAutoencoder(nn.Module):
    """Semantic encoder + conditional DDIM decoder with batched encode/invert/decode."""

    def __init__(self, config: DAEConfig, hu_window: tuple[float, float] = HU_WINDOW) -> None:
        super().__init__()
        self.config = config
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.encoder = SemanticEncoder(config)
        self.unet = ConditionalUNet(config)
        self.scheduler = make_scheduler(config.timesteps)

    @classmethod
    def from_name(cls, name: str) -> DiffusionAutoencoder:
        """A freshly initialised model of the named config."""
        return cls(config_named(name))

    @classmethod
    def tiny(cls) -> DiffusionAutoencoder:
        """The ``tiny`` config (16×16-capable, a few thousand parameters) for tests."""
        return cls.from_name("tiny")

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """HU → network units with this model's window."""
        return hu_to_unit(hu, self.hu_window)

    def to_hu(self, unit: np.ndarray) -> np.ndarray:
        """Network units → HU with this model's window."""
        return unit_to_hu(unit, self.hu_window)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``(B, 1, H, W)`` with H, W divisible by the strides."""
        factor = 2 ** (max(len(self.config.unet_mults), len(self.config.encoder_mults)) - 1)
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"DAE input must be (B, 1, H, W) with H and W divisible by {factor} for config "
                f"{self.config.name!r}, got {tuple(x.shape)}"
            )

    def grid(self, steps: int) -> list[int]:
        """DDIM timesteps ``k · (T // steps)``, ``k = 0 … steps−1`` (ascending)."""
        if not 1 <= steps <= self.config.timesteps:
            raise ValueError(f"DDIM steps must be in 1…{self.config.timesteps}, got {steps}")
        self.scheduler.set_timesteps(steps)  # sets the stride T // steps used by (reversed_)step
        stride = self.config.timesteps // steps
        return [k * stride for k in range(steps)]

    def noise(self, x: torch.Tensor, t: int, z: torch.Tensor) -> torch.Tensor:
        """Predicted ε at integer timestep ``t`` for the whole batch."""
        return self.unet(x, torch.full((len(x),), t, dtype=torch.long, device=x.device), z)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Training forward: predicted ε for noisy images ``x_t`` at timesteps ``t``."""
        return self.unet(x_t, t, z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic latents ``(B, z_dim)`` of images ``(B, 1, H, W)``."""
        self.check_input(x)
        return self.encoder(x)

    def stochastic_encode(self, x: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor:
        """Deterministic DDIM inversion of ``x`` under ``z_sem`` in ``steps`` steps: ``x_T``."""
        self.check_input(x)
        grid = self.grid(steps)
        abar0 = self.scheduler.alphas_cumprod[grid[0]].to(x)
        eps = self.noise(x, grid[0], z_sem)
        x = abar0.sqrt() * x + (1 - abar0).sqrt() * eps  # clean level → ᾱ(t_0)
        for t in grid[:-1]:
            x, _ = self.scheduler.reversed_step(self.noise(x, t, z_sem), t, x)
        return x

    def decode(self, x_t: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor:
        """DDIM sampling (η = 0) from ``x_T`` under ``z_sem`` in ``steps`` steps, in [-1, 1]."""
        self.check_input(x_t)
        x = x_t
        for t in reversed(self.grid(steps)):
            x, _ = self.scheduler.step(self.noise(x, t, z_sem), t, x)
        return x.clamp(-1.0, 1.0)

    def reconstruct(self, x: torch.Tensor, steps_stochastic: int, steps_decode: int):
        """``decode(stochastic_encode(x, z), z)`` with ``z = encode(x)``."""
        z = self.encode(x)
        return self.decode(self.stochastic_encode(x, z, steps_stochastic), z, steps_decode)

    def parameter_count(self) -> dict[str, int]:
        """Parameters of the encoder and of the UNet."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": count(self.encoder), "unet": count(self.unet)}

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """Write weights (fp32), config and HU window (plus ``extra`` JSON-able facts)."""
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.as_dict(),
            "hu_window": list(self.hu_window),
            "state_dict": {k: v.detach().float().cpu() for k, v in self.state_dict().items()},
            "extra": json.loads(json.dumps(extra or {}, default=str)),
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(record, path)

    @classmethod
    def load(
        cls, path: Path | str, config: str | DAEConfig | None = None, device: str = "cpu"
    ) -> DiffusionAutoencoder:
        """Read a checkpoint written by :meth:`save` onto ``device``, in eval mode; with
        ``config``, refuse any other config."""
        path = Path(path)
        record = load_weights(path, "DAE checkpoint")
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{path} is not a wsbench DAE checkpoint (format {FORMAT!r})")
        stored = DAEConfig.from_dict(record["config"])
        if config is not None:
            wanted = config_named(config) if isinstance(config, str) else config
            if stored != wanted:
                raise ValueError(
                    f"{path} holds a DAE of config {stored.name!r} ({stored.as_dict()}), not "
                    f"{wanted.name!r}; pass a checkpoint of that config or train one with "
                    f"`wsbench train --method hideseek -t config={wanted.name}` (or --method ad)"
                )
        model = cls(stored, tuple(record["hu_window"]))
        model.load_state_dict(record["state_dict"])
        return model.to(torch_device(device)).eval()


def to_tensor(
    images: np.ndarray | Sequence[np.ndarray], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(B, H, W)`` arrays as a float32 ``(B, 1, H, W)`` tensor on ``device``."""
    return torch.as_tensor(np.asarray(images, dtype=np.float32), device=device).unsqueeze(1)


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a float64 NumPy array."""
    return tensor.detach().double().cpu().numpy()


class Autoencoder(Protocol):
    """The diffusion-autoencoder interface Hide-and-Seek needs (batched, network units)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def stochastic_encode(
        self, x: torch.Tensor, z_sem: torch.Tensor, steps: int
    ) -> torch.Tensor: ...

    def decode(self, x_t: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor: ...
