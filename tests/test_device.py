"""The one ``device`` parser of wsbench, and the methods and trainer that take it."""

import pytest
import torch

from wsbench.models.device import module_device, torch_device
from wsbench.plugins.ad import AnomalyDetection
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.hideseek import HideAndSeek
from wsbench.plugins.hideseek.attribution import project

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
