"""The diffusion autoencoder (tiny config): DDIM maths, API, checkpoints, training, quality."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import make_vertebra
from torch import nn

from wsbench.contract import Phenotype, PreparedDataset, Split, WeakLabel
from wsbench.models.store import ModelStore, cache_root
from wsbench.plugins.common.dae.network import DiffusionAutoencoder, config_named
from wsbench.plugins.common.dae.quality import latent_swap_hu
from wsbench.plugins.common.dae.training import (
    advance,
    ensure_dae,
    load_session,
    lr_factor,
    model_key,
    new_session,
    run_training,
    save_session,
    train_config,
    training_batch,
    training_state_ema,
    training_vertebrae,
)

STORE = ModelStore()
"""The user cache only (no shipped folder): where these tests' DAEs go."""


def find_dae(fingerprint: str, kind: str = "dae") -> Path | None:
    """The DAE of ``kind`` stored for ``fingerprint``."""
    return STORE.find(kind, fingerprint)


SIZE = 16


class ConstantNoise(nn.Module):
    """A noise predictor that always answers ``eps``."""

    def __init__(self, eps: torch.Tensor) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x, t, z):
        return self.eps.expand_as(x)


class PointMassNoise(nn.Module):
    """The exact ε of a data distribution concentrated on one image ``x_star``."""

    def __init__(self, x_star: torch.Tensor, abar: torch.Tensor) -> None:
        super().__init__()
        self.x_star, self.abar = x_star, abar

    def forward(self, x, t, z):
        a = self.abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.x_star) / (1 - a).sqrt()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def tiny() -> DiffusionAutoencoder:
    torch.manual_seed(0)
    return DiffusionAutoencoder.tiny().eval()


def test_shapes_and_range():
    dae, x = tiny(), images(3)
    with torch.inference_mode():
        z = dae.encode(x)
        x_t = dae.stochastic_encode(x, z, 4)
        out = dae.decode(x_t, z, 4)
    assert z.shape == (3, config_named("tiny").z_dim)
    assert x_t.shape == out.shape == x.shape
    assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        dae.encode(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ValueError, match="DDIM steps"):
        dae.decode(x_t, z, 0)


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_ddim_inversion_of_a_constant_noise_predictor_is_exact(steps):
    dae, x = tiny(), images(2).double()  # float64: exact up to the float32 ᾱ
    eps = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).double()
    dae.unet = ConstantNoise(eps)
    z = torch.zeros(2, config_named("tiny").z_dim)
    x_t = dae.stochastic_encode(x, z, steps)
    top = (steps - 1) * (1000 // steps)  # last grid timestep
    abar = dae.scheduler.alphas_cumprod[top]
    torch.testing.assert_close(x_t, abar.sqrt() * x + (1 - abar).sqrt() * eps)
    torch.testing.assert_close(dae.decode(x_t, z, steps), x, atol=1e-7, rtol=0)


def test_ddim_decode_of_a_point_mass_predictor_returns_that_point_from_any_noise():
    dae, x_star = tiny(), images(1)
    dae.unet = PointMassNoise(x_star, dae.scheduler.alphas_cumprod)
    z = torch.zeros(4, config_named("tiny").z_dim)
    start = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(dae.decode(start, z, 10), x_star.expand(4, -1, -1, -1))
    round_trip = dae.decode(dae.stochastic_encode(x_star.expand(4, -1, -1, -1), z, 10), z, 10)
    torch.testing.assert_close(round_trip, x_star.expand(4, -1, -1, -1))


def test_encode_and_decode_are_deterministic_and_batch_independent():
    dae, x = tiny(), images(3)
    with torch.inference_mode():
        a = dae.reconstruct(x, 3, 3)
        b = dae.reconstruct(x, 3, 3)
        single = torch.cat([dae.reconstruct(x[i : i + 1], 3, 3) for i in range(3)])
    assert torch.equal(a, b)
    torch.testing.assert_close(a, single, atol=1e-4, rtol=0)  # float32 kernels


def test_checkpoint_round_trip_keeps_outputs_and_intensity_window(tmp_path):
    dae = tiny()
    dae.hu_window = (-100.0, 900.0)
    dae.save(tmp_path / "dae-x.pt")
    loaded = DiffusionAutoencoder.load(tmp_path / "dae-x.pt", config="tiny")
    assert loaded.hu_window == (-100.0, 900.0)
    np.testing.assert_allclose(loaded.to_unit(np.array([-100.0, 400.0, 900.0])), [-1, 0, 1])
    x = images(2)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.reconstruct(x, 3, 3), dae.reconstruct(x, 3, 3))


def test_a_checkpoint_of_another_config_is_refused_with_the_fix(tmp_path):
    tiny().save(tmp_path / "dae-x.pt")
    with pytest.raises(ValueError, match=r"config 'tiny'.*-t config=cpu"):
        DiffusionAutoencoder.load(tmp_path / "dae-x.pt", config="cpu")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a wsbench DAE checkpoint"):
        DiffusionAutoencoder.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        DiffusionAutoencoder.load(tmp_path / "missing.pt")


def dataset(train_subjects: int = 6) -> PreparedDataset:
    """Each training subject: one healthy and one malignant vertebra (32×32); two test subjects."""
    vertebrae, seed = [], 0
    phenotypes = [Phenotype.BLASTIC, Phenotype.LYTIC, Phenotype.MIXED]
    for s in range(train_subjects + 2):
        split = Split.TRAIN if s < train_subjects else Split.TEST
        for level, phenotype in [("L1", None), ("L2", phenotypes[s % 3])]:
            vertebrae.append(make_vertebra(f"s{s}", level, split, phenotype, seed))
            seed += 1
    return PreparedDataset("tiny", "tiny-fingerprint", vertebrae)


def test_training_batches_are_seeded_and_healthy_only_keeps_healthy():
    training = dataset().training_set()
    a = training_batch(list(training), 4, seed=3)
    assert a.shape == (4, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, training_batch(list(training), 4, seed=3))
    assert not torch.equal(a, training_batch(list(training), 4, seed=4))
    healthy = training_vertebrae(training, train_config("tiny", healthy_only=True))
    assert {v.label for v in healthy} == {WeakLabel.HEALTHY} and len(healthy) == 6


def test_resume_continues_at_the_right_step_and_matches_an_uninterrupted_run(tmp_path):
    vertebrae = list(dataset().training_set())
    train = train_config("tiny", steps=4)
    key = model_key("tiny-fingerprint", train)
    straight = new_session(key, train)
    advance(straight, vertebrae, 4)
    first = new_session(key, train)
    advance(first, vertebrae, 2)
    save_session(first, tmp_path / "state.resume")
    resumed = load_session(tmp_path / "state.resume", key, train)
    assert resumed.step == 2
    advance(resumed, vertebrae, 4)
    assert resumed.step == 4
    for name, tensor in straight.averaged.state_dict().items():
        assert torch.equal(tensor, resumed.averaged.state_dict()[name]), name
    other = model_key("tiny-fingerprint", train_config("tiny", steps=4, seed=1))
    with pytest.raises(ValueError, match="seed"):
        load_session(tmp_path / "state.resume", other, train)


def test_a_terminated_run_saves_its_state_resumes_and_needs_resume_flag(monkeypatch):
    training = dataset().training_set()
    train = train_config("tiny", steps=3)
    import wsbench.plugins.common.dae.training as module

    real_step, calls = module.train_step, []

    def crash_on_third(session, vertebrae):
        calls.append(session.step)
        if len(calls) == 3:  # `kill <pid>` of a background run
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(session, vertebrae)

    monkeypatch.setattr(module, "train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_training(training, train, STORE, progress=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(module, "train_step", real_step)
    with pytest.raises(FileExistsError, match="--resume"):
        run_training(training, train, STORE, progress=False)
    path, session = run_training(training, train, STORE, resume=True, progress=False)
    assert session.step == 3 and path.exists() and not path.with_suffix(".resume").exists()
    assert "resume" in path.with_suffix(".log").read_text()
    with pytest.raises(FileNotFoundError, match="no interrupted run"):
        run_training(
            training, train_config("tiny", steps=5, seed=1), STORE, resume=True, progress=False
        )


def test_resume_extends_a_finished_run_exactly_as_training_that_long_at_once():
    training = dataset().training_set()
    short, _ = run_training(training, train_config("tiny", steps=2), STORE, progress=False)
    assert short.with_suffix(".state").exists()
    longer, extended = run_training(
        training, train_config("tiny", steps=4), STORE, resume=True, progress=False
    )
    assert longer != short and extended.step == 4
    assert json.loads(longer.with_suffix(".json").read_text())["extends"] == short.stem
    assert f"extend {short.stem}" in longer.with_suffix(".log").read_text()
    straight = new_session(extended.key, train_config("tiny", steps=4))
    advance(straight, list(training), 4)
    for name, tensor in straight.averaged.state_dict().items():
        assert torch.equal(tensor, extended.averaged.state_dict()[name]), name
    ema, step = training_state_ema(longer.with_suffix(".state"))
    assert step == 4
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensor, DiffusionAutoencoder.load(longer).state_dict()[name]), name
    with pytest.raises(FileNotFoundError, match="no finished shorter run"):
        run_training(training, train_config("tiny", steps=1), STORE, resume=True, progress=False)


def test_learning_rate_holds_then_follows_a_cosine_to_zero_and_is_validated():
    constant = train_config("tiny", steps=10)
    assert [lr_factor(constant, s) for s in (0, 9)] == [1.0, 1.0]
    decaying = train_config("tiny", steps=10, lr_decay_from=6)
    assert [lr_factor(decaying, s) for s in (0, 5, 6, 8)] == [1, 1, 1, pytest.approx(0.5)]
    assert lr_factor(decaying, 10) == pytest.approx(0.0)
    session = new_session(model_key("fp", decaying), decaying)
    rates = []
    for _ in range(10):
        rates.append(session.optimiser.param_groups[0]["lr"])
        session.optimiser.step()  # no gradients: the weights stay, the schedule advances
        session.schedule.step()
    assert rates == pytest.approx([decaying.lr * lr_factor(decaying, s) for s in range(10)])
    assert "lr_decay_from" not in constant.as_dict()  # constant-rate keys predate the option
    assert decaying.as_dict()["lr_decay_from"] == 6
    with pytest.raises(ValueError, match="lr_decay_from=10"):
        train_config("tiny", steps=10, lr_decay_from=10)


def test_a_decaying_run_extends_a_constant_one_exactly_and_is_never_extended_itself():
    training = dataset().training_set()
    short, _ = run_training(training, train_config("tiny", steps=2), STORE, progress=False)
    decaying = train_config("tiny", steps=4, lr_decay_from=2)
    _, extended = run_training(training, decaying, STORE, resume=True, progress=False)
    lr = extended.optimiser.param_groups[0]["lr"]
    assert lr == pytest.approx(decaying.lr * lr_factor(decaying, 4)) and lr == 0
    straight = new_session(extended.key, decaying)
    advance(straight, list(training), 4)
    for name, tensor in straight.averaged.state_dict().items():
        assert torch.equal(tensor, extended.averaged.state_dict()[name]), name
    with pytest.raises(FileNotFoundError, match="no finished shorter run"):  # decays before 2
        run_training(training, train_config("tiny", steps=4, lr_decay_from=1), STORE, resume=True,
                     progress=False)  # fmt: skip
    later, _ = run_training(
        training, train_config("tiny", steps=6, lr_decay_from=4), STORE, resume=True, progress=False
    )  # the 4-step run has decayed already: only the 2-step constant one is continued
    assert json.loads(later.with_suffix(".json").read_text())["extends"] == short.stem


def test_latent_swap_is_zero_when_z_is_ignored_or_identical_and_positive_otherwise():
    dae = tiny()
    hu = dae.to_hu(images(3).numpy()[:, 0])
    assert latent_swap_hu(dae, hu, (3, 3)) > 0  # the untrained tiny UNet reads z_sem
    assert latent_swap_hu(dae, np.repeat(hu[:1], 3, axis=0), (3, 3)) == 0  # same z everywhere
    eps = torch.randn(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    dae.unet = ConstantNoise(eps)  # a decoder that never looks at z_sem
    assert latent_swap_hu(dae, hu, (3, 3)) == 0


def test_ensure_dae_trains_cards_evaluates_and_then_reuses():
    prepared = dataset()
    train = train_config("tiny", steps=2)
    path, trained = ensure_dae(
        prepared.training_set(), train, STORE, evaluate_steps=(2, 2), progress=False
    )
    assert (
        trained
        and path.name.startswith("dae-")
        and path
        == STORE.find("dae", "tiny-fingerprint", model_key("tiny-fingerprint", train).config)
    )
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["kind"] == "dae" and card["dataset_fingerprint"] == "tiny-fingerprint"
    assert card["seed"] == 0 and card["steps"] == 2 and card["heldout_n"] == 4
    assert 0 <= card["latent_auc"] <= 1 and -1 <= card["ssim_mean"] <= 1
    assert 0 <= card["latent_auc_untrained"] <= 1
    assert card["latent_swap_hu"] > 0
    assert card["eval_steps_stochastic_decode"] == [2, 2] and "command" in card
    assert path.with_suffix(".png").exists()
    assert ensure_dae(
        prepared.training_set(), train, STORE, evaluate_steps=(2, 2), progress=False
    ) == (path, False)
    card_path = path.with_suffix(".json")
    card_path.write_text(json.dumps({**card, "latent_swap_hu": -1.0}))
    ensure_dae(prepared.training_set(), train, STORE, evaluate_steps=(2, 2), progress=False)
    assert json.loads(card_path.read_text())["latent_swap_hu"] == -1.0
    ensure_dae(
        prepared.training_set(),
        train,
        STORE,
        evaluate_steps=(2, 2),
        progress=False,
        reevaluate=True,
    )
    reevaluated = json.loads(card_path.read_text())
    timing = "eval_seconds_per_image"
    assert reevaluated.pop(timing) >= 0 and reevaluated == {k: card[k] for k in card if k != timing}
    assert find_dae("tiny-fingerprint") == path
    assert find_dae("tiny-fingerprint", "dae-healthy") is None
    assert find_dae("another") is None


def cached_run(stem: str, fingerprint: str = "fp", **card: object) -> Path:
    """An empty ``<stem>.pt`` in the model cache with a DAE card for ``fingerprint``."""
    folder = cache_root() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"kind": "dae", "dataset_fingerprint": fingerprint, "steps": 10, "seed": 0, **card}
    (folder / f"{stem}.json").write_text(json.dumps(record))
    path = folder / f"{stem}.pt"
    path.touch()
    return path


def test_find_dae_follows_extensions_and_refuses_unrelated_runs():
    short = cached_run("dae-short")
    cached_run("dae-other-dataset", fingerprint="elsewhere")
    cached_run("dae-healthy-x", kind="dae-healthy")
    assert find_dae("fp") == short
    longer = cached_run("dae-longer", steps=20, extends="dae-short")
    os.utime(short, (time.time() + 60, time.time() + 60))  # a newer file date changes nothing
    assert find_dae("fp") == longer
    cached_run("dae-seed1", seed=1)
    with pytest.raises(
        ValueError, match=r"2 unrelated dae models.*dae-longer\.pt \(20 steps, seed 0\)"
    ):
        find_dae("fp")
    assert find_dae("elsewhere").name == "dae-other-dataset.pt"


def test_train_command_trains_the_tiny_dae_and_checks_its_settings():
    from typer.testing import CliRunner

    from wsbench.cli.main import app

    runner = CliRunner()
    base = ["train", "--dataset", "fakes:TinyDataset", "--method", "hideseek", "-t", "config=tiny"]
    result = runner.invoke(app, [*base, "-t", "steps=1"])
    assert result.exit_code == 0, result.output
    card = json.loads(find_dae("tiny-fingerprint").with_suffix(".json").read_text())
    assert card["steps"] == 1 and card["latent_auc"] is None and "two" in card["latent_auc_error"]
    assert card["device"] == "cpu" and card["config"]["config"] == "tiny"
    healthy = runner.invoke(app, [*base[:-3], "ad", "-t", "config=tiny", "-t", "steps=1"])
    assert healthy.exit_code == 0, healthy.output
    assert find_dae("tiny-fingerprint", "dae-healthy") is not None
    late = runner.invoke(app, [*base, "-t", "steps=2", "-t", "lr_decay_from=2"])
    assert late.exit_code == 1 and "lr_decay_from=2" in late.output
    unknown = runner.invoke(app, [*base, "-t", "stepz=2"])
    assert unknown.exit_code == 1 and "Did you mean 'steps'?" in unknown.output
    typed = runner.invoke(app, [*base, "-t", "steps=many"])
    assert typed.exit_code == 1 and "'many' is not int" in typed.output
    bad = runner.invoke(app, [*base, "-t", "steps=2", "-p", "device=gpu"])
    assert bad.exit_code == 1 and "device='gpu' is not a torch device" in bad.output
    nothing = runner.invoke(app, ["train", "--dataset", "fakes:TinyDataset", "--method", "otsu"])
    assert nothing.exit_code == 1 and "learns nothing" in nothing.output
