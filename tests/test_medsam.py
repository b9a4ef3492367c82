"""MedSAM plugin: checkpoint handling, box prompt, preprocessing, decoding, tiny SAM end to end."""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.harness.runner import RunConfig, run
from wsbench.plugins import medsam
from wsbench.plugins.medsam import (
    ENV_VAR,
    CheckpointError,
    MedSAM,
    WeightsNotSuppliedError,
    loose_box,
    margin_pixels,
    masks_on_slice,
    preprocess,
    scale_box,
)
from wsbench.testing import sample_of

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16, "window_size": 2}


def tiny_sam(img_size: int, seed: int = 0) -> Sam:
    """A randomly initialised SAM with a 2-block, 32-wide ViT (block 1 global), 8-head decoder."""
    torch.manual_seed(seed)
    grid = img_size // TINY["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=img_size,
            patch_size=TINY["patch_size"],
            embed_dim=TINY["embed_dim"],
            depth=TINY["depth"],
            num_heads=TINY["num_heads"],
            out_chans=32,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=TINY["window_size"],
            global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, num_heads=8, mlp_dim=64),
            iou_head_hidden_dim=16,
        ),
    )
    with torch.no_grad():  # SAM zero-initialises these; random values make them matter
        for name, param in sam.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0, 0.5)
    return sam.eval()


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, Sam]:
    """A 64² tiny SAM saved as a plain state dict, as medsam_vit_b.pth is."""
    sam = tiny_sam(64)
    path = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), path)
    return path, sam


def vertebra_slice(shape: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A bright body with a dark focus on soft tissue, and its body mask."""
    h, w = shape
    image = np.full(shape, -50.0, np.float32)
    body = np.zeros(shape, bool)
    body[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = True
    image[body] = 350.0
    image[h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3] = 20.0
    image[0, :] = 2000.0  # outside the window: saturates
    return image, body


# --- box prompt -------------------------------------------------------------------------------


def test_box_is_the_body_box_without_margin() -> None:
    body = np.zeros((64, 64), bool)
    body[10:21, 5:31] = True
    body[15, 40] = True  # an isolated pixel widens the box
    assert loose_box(body, (0, 0)).tolist() == [5, 10, 40, 20]


def test_box_grows_by_the_margin_per_axis() -> None:
    body = np.zeros((64, 64), bool)
    body[10:21, 5:31] = True
    assert loose_box(body, (2, 3)).tolist() == [2, 8, 33, 22]


def test_box_is_clipped_at_the_border() -> None:
    body = np.zeros((40, 64), bool)
    body[0:4, 60:64] = True
    assert loose_box(body, (5, 5)).tolist() == [55, 0, 63, 8]


def test_margin_in_mm_follows_the_spacing() -> None:
    assert margin_pixels(4.0, (0.8, 0.8)) == (5, 5)
    assert margin_pixels(4.0, (0.8, 2.0)) == (5, 2)
    assert margin_pixels(0.0, (0.8, 0.8)) == (0, 0)


def test_box_scales_to_the_encoder_grid_like_medsam() -> None:
    scaled = scale_box(np.array([0, 0, 63, 31]), (32, 64), 1024)
    assert scaled.tolist() == [0.0, 0.0, 63 * 16.0, 31 * 32.0]


def test_empty_body_is_an_error(tiny_checkpoint: tuple[Path, Sam]) -> None:
    method = MedSAM(checkpoint=str(tiny_checkpoint[0]))
    with pytest.raises(ValueError, match="body mask is empty"):
        method.segment(sample_of(np.zeros((64, 64)), np.zeros((64, 64), bool), spacing=(0.8, 0.8)))


# --- preprocessing and decoding ---------------------------------------------------------------


def test_preprocess_windows_then_scales_to_unit_range() -> None:
    image = np.array([[-1000.0, -200.0], [500.0, 3000.0]])
    x = preprocess(image, (-200.0, 1300.0), 2)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    expected = np.array([[0.0, 0.0], [np.round(700 / 1500 * 255) / 255, 1.0]], np.float32)
    assert np.array_equal(x[0], expected)


def test_preprocess_resizes_to_the_encoder_size() -> None:
    image, _ = vertebra_slice((40, 52))
    x = preprocess(image, (-200.0, 1300.0), 128)
    assert x.shape == (3, 128, 128)
    assert x.min() == 0.0 and x.max() == 1.0


def test_flat_slice_gives_zeros_not_nan() -> None:
    x = preprocess(np.full((8, 8), 300.0), (-200.0, 1300.0), 16)
    assert np.array_equal(x, np.zeros((3, 16, 16), np.float32))


def test_low_res_logits_round_trip_to_the_slice_exactly() -> None:
    mask = np.random.default_rng(0).random((16, 16)) > 0.5
    upsampled = np.kron(mask, np.ones((4, 4), bool))  # nearest ×4, like a 1024 → 256 grid
    logits = torch.from_numpy(np.where(upsampled, 8.0, -8.0)[None, None]).float()
    assert np.array_equal(masks_on_slice(logits, (16, 16))[0], mask)


def test_threshold_is_probability_one_half() -> None:
    logits = torch.tensor([[[[-0.01, 0.01]]]])
    assert masks_on_slice(logits, (1, 2))[0].tolist() == [[False, True]]


# --- checkpoint -------------------------------------------------------------------------------


def test_missing_checkpoint_says_where_to_get_the_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(WeightsNotSuppliedError) as info:
        MedSAM()
    message = str(info.value)
    needles = ("not supplied", "bowang-lab/MedSAM", "medsam_vit_b.pth", "--checkpoint", ENV_VAR)
    assert all(needle in message for needle in needles), message


def test_nonexistent_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotSuppliedError, match=r"nope\.pth.*--checkpoint"):
        MedSAM(checkpoint=str(tmp_path / "nope.pth"))


def test_checkpoint_from_the_environment(
    tiny_checkpoint: tuple[Path, Sam], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = tiny_checkpoint
    monkeypatch.setenv(ENV_VAR, str(path))
    method = MedSAM()
    assert method.params()["checkpoint"] is None and method.weights == path.resolve()


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "medsam_vit_b.pth"
    path.write_bytes(b"<html>Google Drive virus scan warning</html>")
    with pytest.raises(CheckpointError, match=r"medsam_vit_b.pth is not a MedSAM checkpoint"):
        MedSAM(checkpoint=str(path))


def test_truncated_checkpoint_is_a_clear_error(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, _ = tiny_checkpoint
    half = path.with_name("half.pth")
    half.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"half\.pth.*corrupt"):
        MedSAM(checkpoint=str(half))


def test_other_network_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet\.pth is not a SAM/MedSAM checkpoint"):
        MedSAM(checkpoint=str(path))


def test_transformers_conversion_is_recognised(tmp_path: Path) -> None:
    path = tmp_path / "pytorch_model.bin"
    torch.save({"vision_encoder.patch_embed.projection.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="Hugging Face transformers"):
        MedSAM(checkpoint=str(path))


def test_architecture_is_read_from_the_weights(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, sam = tiny_checkpoint
    loaded, arch = medsam.load_sam(path)
    assert (arch.img_size, arch.embed_dim, arch.depth, arch.num_heads) == (64, 32, 2, 2)
    assert (arch.window_size, arch.global_attn_indexes, arch.prompt_dim) == (2, (1,), 32)
    assert (arch.decoder_depth, arch.decoder_mlp_dim, arch.iou_head_hidden_dim) == (2, 64, 16)
    for key, value in sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_vit_b_layout_is_recognised() -> None:
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state = sam_model_registry["vit_b"]().state_dict()
    arch = medsam.infer_architecture(state)
    assert arch.name == "vit_b"
    assert arch.global_attn_indexes == (2, 5, 8, 11) and arch.window_size == 14
    assert (arch.mask_in_chans, arch.decoder_mlp_dim, arch.num_multimask_outputs) == (16, 2048, 3)


def test_params_and_models_record_the_file_and_its_hash(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, _ = tiny_checkpoint
    method = MedSAM(checkpoint=str(path), box_margin=2.0, window="-100,1000")
    params = method.params()
    assert params["checkpoint"] == str(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert method.models() == {"sam": f"{path.stem}-{sha}"}
    assert params["window"] == (-100.0, 1000.0) and params["box_margin"] == 2.0
    assert method.architecture.name.startswith("vit(embed_dim=32")
    json.dumps(params)


def test_bad_window_is_named() -> None:
    with pytest.raises(ValueError, match="window"):
        medsam.parse_window("1300,-200")


# --- end to end -------------------------------------------------------------------------------


def reference_mask(sam: Sam, image: np.ndarray, body: np.ndarray, margin_px: int) -> np.ndarray:
    """MedSAM_Inference by hand for a 64² slice on a 64² model (no resize)."""
    clipped = np.clip(image, -200.0, 1300.0)
    grey = np.round((clipped - clipped.min()) / (clipped.max() - clipped.min()) * 255) / 255
    x = torch.from_numpy(np.repeat(grey[None, None], 3, axis=1)).float()
    ys, xs = np.nonzero(body)
    box = [xs.min() - margin_px, ys.min() - margin_px, xs.max() + margin_px, ys.max() + margin_px]
    with torch.no_grad():
        embedding = sam.image_encoder(x)
        sparse, dense = sam.prompt_encoder(
            points=None, boxes=torch.tensor([[box]], dtype=torch.float32), masks=None
        )
        logits, _ = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    probability = F.interpolate(torch.sigmoid(logits), size=image.shape, mode="bilinear")
    return (probability[0, 0] > 0.5).numpy().astype(np.uint8)


def test_segment_matches_medsam_inference_by_hand(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, sam = tiny_checkpoint
    image, body = vertebra_slice()
    method = MedSAM(checkpoint=str(path), box_margin=4.0)
    out = method.segment(sample_of(image, body, spacing=(0.8, 0.8)))
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert np.array_equal(out, reference_mask(sam, image, body, margin_px=5))
    assert 0 < out.sum() < out.size  # the tiny model's answer is not trivially constant


def test_the_box_prompt_reaches_the_decoder(tiny_checkpoint: tuple[Path, Sam]) -> None:
    path, _ = tiny_checkpoint
    image, body = vertebra_slice()
    tight = MedSAM(checkpoint=str(path), box_margin=0.0).segment(
        sample_of(image, body, spacing=(1, 1))
    )
    loose = MedSAM(checkpoint=str(path), box_margin=8.0).segment(
        sample_of(image, body, spacing=(1, 1))
    )
    assert not np.array_equal(tight, loose)


@pytest.mark.parametrize("shape", [(64, 64), (40, 52), (97, 33)])
def test_any_slice_size_through_a_resizing_model(tmp_path: Path, shape: tuple[int, int]) -> None:
    path = tmp_path / "tiny128.pth"
    torch.save(tiny_sam(128, seed=1).state_dict(), path)
    image, body = vertebra_slice(shape)
    out = MedSAM(checkpoint=str(path)).segment(sample_of(image, body, spacing=(0.8, 0.8)))
    assert out.shape == shape and out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}


def test_batched_encoding_equals_one_by_one(tiny_checkpoint: tuple[Path, Sam]) -> None:
    method = MedSAM(checkpoint=str(tiny_checkpoint[0]))
    slices = [vertebra_slice((64, 64)), vertebra_slice((48, 60))]
    single = [method.segment(sample_of(im, b, spacing=(0.8, 0.8))) for im, b in slices]
    images, bodies = zip(*slices, strict=True)
    batched = method.segment_many(images, bodies, [(0.8, 0.8)] * 2)
    assert all(np.array_equal(a, b) for a, b in zip(single, batched, strict=True))


def test_runs_through_the_harness(tiny_checkpoint: tuple[Path, Sam], tmp_path: Path) -> None:
    params = {"checkpoint": str(tiny_checkpoint[0])}
    config = RunConfig("medsam", "fakes:TinyDataset", params=params)
    result = run(config, tmp_path / "runs")
    assert (result.cases["status"] == "ok").all() and len(result.cases) == 4
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["method"]["models"]["sam"].startswith(tiny_checkpoint[0].stem)


def test_cli_passes_checkpoint_and_window(tiny_checkpoint: tuple[Path, Sam], tmp_path: Path):
    args = ["run", "-m", "medsam", "-d", "fakes:TinyDataset", "--out", str(tmp_path / "runs")]
    args += ["--checkpoint", str(tiny_checkpoint[0]), "-p", "window=-100,1200"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (manifest,) = (tmp_path / "runs").glob("*/medsam/*/manifest.json")
    assert json.loads(manifest.read_text())["method"]["params"]["window"] == [-100.0, 1200.0]


def test_cli_without_weights_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    args = ["run", "-m", "medsam", "-d", "fakes:TinyDataset", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "weights not supplied" in result.output and "Traceback" not in result.output
