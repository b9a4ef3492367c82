"""DAE training under torchrun: DDP over two CPU processes (gloo) against a single process."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fakes import make_vertebra

import wsbench.plugins.common.dae.training as training_module
from wsbench.contract import PreparedDataset, Split, TrainingSet
from wsbench.models.store import ModelStore
from wsbench.plugins.common.dae.distributed import Ranks, rank_device, torchrun_ranks
from wsbench.plugins.common.dae.training import (
    advance,
    load_session,
    model_key,
    new_session,
    run_training,
    step_seed,
    train_config,
    training_batch,
)

WORLD = 2
TOLERANCE = 5e-5
"""Largest absolute weight difference allowed between DDP and one process. The same sums in
another order (each process's mean over its rows, then DDP's average) differ in float32 rounding,
which Adam enlarges where a gradient is rounding noise (the attention's key bias, whose exact
gradient is 0: Adam divides it by ε = 1e-8); measured 7.6e-6 after 3 steps, while a wrong share
of the batch moves weights by up to one Adam step (lr = 1e-3)."""
DEADLINE_S = 120.0
"""A DDP test that has not finished by then is stopped and fails instead of hanging."""


def training_set() -> TrainingSet:
    """Six constructed training vertebrae of three subjects (no test split)."""
    rows = [(f"s{i // 2}", ("L1", "L2")[i % 2]) for i in range(6)]
    vertebrae = [make_vertebra(s, level, Split.TRAIN, None, i) for i, (s, level) in enumerate(rows)]
    return PreparedDataset("tiny", "tiny-fingerprint", vertebrae).training_set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_worker(
    rank: int, port: int, caches: list[str], steps: int, resume: bool, fail_at: int | None
) -> None:
    """One process as torchrun would start it: its environment, then the library's training.
    ``caches[rank]`` is its model cache; the images its loss sees at step k are saved to
    ``<cache>-batches/k.pt``; ``fail_at``: rank 1 crashes at that step."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WSBENCH_CACHE=caches[rank])
    torch.set_num_threads(1)
    seen = Path(f"{caches[rank]}-batches")
    seen.mkdir(parents=True)
    real_loss = training_module.denoising_loss

    def recording(model, x0, t, noise):
        torch.save(x0, seen / f"{len(list(seen.iterdir()))}.pt")
        return real_loss(model, x0, t, noise)

    training_module.denoising_loss = recording
    if fail_at is not None and rank == 1:
        real_step = training_module.train_step

        def crash(session, vertebrae):
            if session.step == fail_at:
                raise RuntimeError(f"rank 1 lost at step {fail_at}")
            return real_step(session, vertebrae)

        training_module.train_step = crash
    train = train_config("tiny", steps=steps)
    run_training(training_set(), train, ModelStore(), resume=resume, progress=False)


@pytest.fixture(autouse=True)
def outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start the worker processes in a scratch folder: an interpreter started in the repository
    imports its source folder ``wsbench/`` (which lacks the plugins, mapped there only when
    installed) instead of the installed package."""
    monkeypatch.chdir(tmp_path)


def launch(caches: list[Path], steps: int, resume: bool = False, fail_at: int | None = None):
    """Run :func:`torchrun_worker` in ``WORLD`` fresh processes; stop them at the deadline.

    They are forked from a forkserver that imported the training module (torch, MONAI) once for
    all launches: a fresh interpreter per process would spend most of a test importing. (The
    forkserver ignores ``sys.path``, so it preloads an installed module, not this one.)"""
    multiprocessing.get_context("forkserver").set_forkserver_preload([training_module.__name__])
    args = (free_port(), [str(c) for c in caches], steps, resume, fail_at)
    context = mp.start_processes(
        torchrun_worker, args, WORLD, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + DEADLINE_S
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"DDP training did not finish within {DEADLINE_S} s")


def single_process(steps: int):
    """The EMA and raw weights of one process training ``steps`` with the same global batch."""
    train = train_config("tiny", steps=steps)
    session = new_session(model_key("tiny-fingerprint", train), train)
    advance(session, list(training_set()), steps)
    return session


def assert_close_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    """Every tensor of ``actual`` within :data:`TOLERANCE` of ``expected``'s."""
    got = actual.state_dict()
    for name, tensor in expected.state_dict().items():
        difference = (tensor - got[name]).abs().max().item()
        assert difference < TOLERANCE, f"{name}: max abs difference {difference:.2e}"


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_two_gloo_processes_train_as_one_with_the_global_batch_and_only_rank_0_writes(
    tmp_path, one_torch_thread
):
    caches = [tmp_path / "rank0", tmp_path / "rank1"]
    launch(caches, steps=3)
    train = train_config("tiny", steps=3)
    key = model_key("tiny-fingerprint", train)
    models = caches[0] / "models"
    written = {f"{key.stem}{suffix}" for suffix in (".pt", ".json", ".md", ".state", ".log")}
    assert set(files(models)) == written
    assert files(caches[1]) == {}
    for step in range(3):  # each rank's loss saw its half of the global batch of one process
        halves = [torch.load(f"{cache}-batches/{step}.pt") for cache in caches]
        whole = training_batch(list(training_set()), 4, step_seed(0, step))
        assert [len(half) for half in halves] == [2, 2] and torch.equal(torch.cat(halves), whole)
    alone = single_process(3)
    distributed = load_session(models / f"{key.stem}.state", key, train)
    assert distributed.step == 3
    assert_close_weights(alone.model, distributed.model)
    assert_close_weights(alone.averaged, distributed.averaged)
    initial = new_session(key, train).model.state_dict()
    assert any(not torch.equal(t, initial[n]) for n, t in distributed.model.state_dict().items())
    log = (models / f"{key.stem}.log").read_text()
    assert log.count("start ") == 1 and log.count("step 3/3") == 1
    card = (models / f"{key.stem}.json").read_text()
    assert '"processes": 2' in card and '"device": "cpu"' in card


def test_every_rank_resumes_the_same_state_and_extends_as_one_process(tmp_path, one_torch_thread):
    caches = [tmp_path / "rank0", tmp_path / "rank1"]
    short_train = train_config("tiny", steps=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WSBENCH_CACHE", str(caches[0]))
        short, _ = run_training(training_set(), short_train, ModelStore(), progress=False)
    shutil.copytree(caches[0], caches[1])  # every rank sees the finished 2-step run
    before = files(caches[1])
    launch(caches, steps=4, resume=True)
    train = train_config("tiny", steps=4)
    key = model_key("tiny-fingerprint", train)
    extended = load_session(caches[0] / "models" / f"{key.stem}.state", key, train)
    assert extended.step == 4
    assert f"extend {short.stem}" in (caches[0] / "models" / f"{key.stem}.log").read_text()
    alone = single_process(4)
    assert_close_weights(alone.model, extended.model)
    assert_close_weights(alone.averaged, extended.averaged)
    assert files(caches[1]) == before


def test_a_failing_rank_stops_the_job_with_its_error_instead_of_hanging(tmp_path):
    caches = [tmp_path / "rank0", tmp_path / "rank1"]
    # whichever fails first is reported: rank 1's error, or rank 0 losing its peer
    lost = "rank 1 lost at step 1|Connection closed by peer"
    with pytest.raises(mp.ProcessRaisedException, match=lost):
        launch(caches, steps=3, fail_at=1)


def test_torchrun_environment_is_read_checked_and_maps_devices(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_ranks() is None
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ValueError, match="WORLD_SIZE, LOCAL_RANK not set"):
        torchrun_ranks()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match="non-integer rank"):
        torchrun_ranks()
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = torchrun_ranks()
    assert ranks == Ranks(1, 4, 1) and not ranks.main
    assert ranks.rows(8) == slice(2, 4)
    assert rank_device("cpu", ranks) == "cpu"


def test_a_global_batch_that_the_processes_cannot_share_is_refused_naming_both(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match=r"batch_size=4 is not divisible by the 3 torchrun"):
        run_training(training_set(), train_config("tiny", steps=1), ModelStore(), progress=False)
