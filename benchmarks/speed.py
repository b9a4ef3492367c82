"""Speed probes: how fast wsbench's pieces run on this machine. One command per probe; each
prints one JSON record.

Usage:

    python benchmarks/speed.py --help
    python benchmarks/speed.py cam --vertebrae 20 --train-epochs 1
    python benchmarks/speed.py dae --repeats 3 --steps 20/20 --steps 250/100
    python benchmarks/speed.py medsam --repeats 3 --batch 2
    python benchmarks/speed.py preprocess --subjects 4
    python benchmarks/speed.py tcia --subjects 4
    python benchmarks/speed.py phantom --subjects 340 --otsu
    python benchmarks/speed.py timeout --method otsu --repeats 5

Timings are wall seconds (medians where a probe repeats). Models with random weights are used
wherever speed does not depend on the weights. Nothing is written to the wsbench cache except
where a probe says so: training and building go to a temporary cache. Other jobs on the same
cores distort the figures; the torch thread count is an option of every probe that uses torch.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from experiments.common import TPTBOX, prepared

from wsbench.contract import (
    Split,
    TrainingSet,
    TrainingVertebra,
    VertebraKey,
    VertebraSample,
    WeakLabel,
)
from wsbench.data.volumes import LEVEL_NUMBERS, SubjectVolumes, VertebraLabel
from wsbench.models.store import cache_root

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__,
                  rich_markup_mode="markdown")  # fmt: skip

Threads = Annotated[int, typer.Option(min=1, help="torch CPU threads")]
Repeats = Annotated[int, typer.Option(min=1, help="timed calls (the median is reported)")]
Subjects = Annotated[int, typer.Option(min=1, help="constructed subjects")]
Shape = Annotated[tuple[int, int, int], typer.Option(help="CT grid of a subject (voxels)")]
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
SLICE = 64


# --- shared setup -------------------------------------------------------------------------------


def use_threads(count: int) -> None:
    """Torch on ``count`` CPU threads, seeded."""
    torch.set_num_threads(count)
    torch.manual_seed(0)


def seconds(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def median_seconds(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    return statistics.median(seconds(call) for _ in range(repeats))


def peak_rss_mb() -> int:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in kB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def emit(record: dict[str, Any]) -> None:
    """Print the probe's result: one JSON record."""
    print(json.dumps(record, indent=2, default=str))


@contextmanager
def temporary_cache(keep: Path | None = None) -> Iterator[Path]:
    """``WSBENCH_CACHE`` pointed at a fresh temporary folder (or at ``keep``) for the block."""
    previous = os.environ.get("WSBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="wsbench-speed-") as fresh:
        os.environ["WSBENCH_CACHE"] = str(keep or fresh)
        try:
            yield Path(os.environ["WSBENCH_CACHE"])
        finally:
            if previous is None:
                del os.environ["WSBENCH_CACHE"]
            else:
                os.environ["WSBENCH_CACHE"] = previous


def random_slices(count: int, seed: int) -> np.ndarray:
    """``count`` 64×64 HU slices: a bright noisy body on soft tissue."""
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 30.0, (count, SLICE, SLICE)).astype(np.float32)
    image[:, 14:50, 12:52] += 300.0
    return image


def synthetic_sample(seed: int) -> VertebraSample:
    """What ``Method.segment`` gets for one constructed vertebra (0.8 mm slices)."""
    stack = random_slices(5, seed)
    body = np.zeros(stack.shape, bool)
    body[:, 14:50, 12:52] = True
    key = VertebraKey("speed", f"s{seed:03d}", "L3")
    return VertebraSample(key, stack[2], body[2], (0.8, 0.8), stack, body)


def lumbar_subject(name: str, shape: tuple[int, int, int], seed: int) -> SubjectVolumes:
    """Five stacked box vertebrae L1–L5 (body 40×30×27 mm, posterior ring, spinous process) in
    soft tissue with noise, on a clinical-sized RAS grid of 0.7 × 0.7 × 1.5 mm."""
    from nibabel.affines import apply_affine

    spacing = np.array([0.7, 0.7, 1.5])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    x, y, z = apply_affine(affine, np.indices(shape).reshape(3, -1).T).T
    vert = np.zeros(x.size, np.uint8)
    subreg = np.zeros(x.size, np.uint8)
    ct = np.full(x.size, 40.0)
    height, gap = 27.0, 9.0
    for i, level in enumerate(LUMBAR):
        zz = np.abs(z - (2 - i) * (height + gap))
        body = (np.abs(x) < 20) & (y >= 0) & (y < 30) & (zz < height / 2)
        ring = (np.abs(x) < 14) & (y < 0) & (y >= -18) & (zz < 8)
        ring &= ~((np.abs(x) < 7) & (y < -4) & (y >= -14))
        spinous = (np.abs(x) < 3) & (y < -18) & (y >= -35) & (zz < 6)
        vert[body | ring | spinous] = LEVEL_NUMBERS[level]
        subreg[body], subreg[ring | spinous] = 50, 41
        ct[body], ct[ring | spinous] = 220.0, 500.0
    ct += np.random.default_rng(seed).normal(0, 20, ct.size)
    vertebrae = [VertebraLabel(level, WeakLabel.HEALTHY) for level in LUMBAR]
    return SubjectVolumes(
        name, np.round(ct).astype(np.int16).reshape(shape), affine,
        vert.reshape(shape), vertebrae, subreg=subreg.reshape(shape),
    )  # fmt: skip


def lumbar_subjects(count: int, shape: tuple[int, int, int], digits: int) -> list[SubjectVolumes]:
    """``count`` constructed subjects named ``000``, ``001``, … (``digits`` wide)."""
    return [lumbar_subject(f"{i:0{digits}d}", shape, i) for i in range(count)]


def cold_and_cached(prepare: Callable[[], Any]) -> dict[str, Any]:
    """Vertebrae per second of ``prepare()`` with an empty cache and again with it filled."""
    cold_s, first = seconds_and_result(prepare)
    cached_s, again = seconds_and_result(prepare)
    if first.skipped or len(first.vertebrae) != len(again.vertebrae):
        raise RuntimeError(f"unexpected skips: {first.skipped}")
    n = len(first.vertebrae)
    return {
        "vertebrae": n,
        "cold_s": round(cold_s, 2),
        "cold_vertebrae_per_s": round(n / cold_s, 1),
        "cached_s": round(cached_s, 3),
        "cached_vertebrae_per_s": round(n / cached_s),
    }


def seconds_and_result(call: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call, and what it returned."""
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


# --- probes -------------------------------------------------------------------------------------


@app.command()
def cam(
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    root: Annotated[Path | None, typer.Option(help="the dataset's --root")] = None,
    vertebrae: Annotated[int, typer.Option(min=1, help="test vertebrae timed")] = 20,
    threads: Threads = 2,
    train_epochs: Annotated[int, typer.Option(help="classifier epochs timed (0: skip)")] = 1,
    train_vertebrae: Annotated[
        int | None, typer.Option(help="seeded subset of the labelled training vertebrae")
    ] = None,
) -> None:
    """Seconds per vertebra of each CAM (``segment`` only: heatmap and Otsu, the model loaded
    once) and the classifier's training time.

    The CAMs use the dataset's stored classifier when there is one, else a seeded random-weight
    ResNet-18 (the cost does not depend on the weights). Training runs in a temporary cache on
    the training split (or ``--train-vertebrae`` of it), validation and saving included.
    """
    from wsbench.plugins.cam import (
        EigenCAMMethod,
        GradCAMMethod,
        GradCAMPlusPlusMethod,
        LayerCAMMethod,
    )
    from wsbench.plugins.cam.classifier import (
        STORE,
        ClassifierConfig,
        build_resnet18,
        load_classifier,
        model_key,
        train_classifier,
    )

    use_threads(threads)
    data = prepared(dataset, str(root) if root else None)
    key = model_key(data.fingerprint, ClassifierConfig())
    stored = STORE.find(key.kind, key.dataset_fingerprint, key.config)
    model = load_classifier(stored) if stored else build_resnet18().eval()
    samples = [v.sample() for v in data.split(Split.TEST)[:vertebrae]]
    record: dict[str, Any] = {
        "dataset": data.name,
        "threads": threads,
        "model": stored.name if stored else "random-weight ResNet-18 (no stored classifier)",
        "vertebrae": len(samples),
        "seconds_per_vertebra": {},
    }
    for cls in (GradCAMMethod, GradCAMPlusPlusMethod, LayerCAMMethod, EigenCAMMethod):
        method = cls()
        method.network = model
        times = [seconds(lambda m=method, s=s: m.segment(s)) for s in samples]
        record["seconds_per_vertebra"][cls.name] = round(statistics.median(times), 4)
    if train_epochs > 0:
        training = data.training_set().labelled()
        if train_vertebrae is not None:
            rows = sorted(np.random.default_rng(0).permutation(len(training))[:train_vertebrae])
            kept = [training[int(i)] for i in rows]
            training = TrainingSet(training.name, training.fingerprint, kept)
        with temporary_cache():
            config = ClassifierConfig(epochs=train_epochs)
            took = seconds(lambda: train_classifier(training, config, progress=False))
        record["classifier_training"] = {
            "epochs": train_epochs,
            "labelled_vertebrae": len(training),
            "seconds": round(took, 1),
        }
    record["peak_rss_mb"] = peak_rss_mb()
    emit(record)


@app.command()
def dae(
    config: Annotated[
        str, typer.Option(help="DAE architecture, random weights (the shipped DAEs: cpu)")
    ] = "cpu",
    threads: Threads = 2,
    batch: Annotated[int, typer.Option(min=1, help="training batch")] = 8,
    infer_batch: Annotated[int, typer.Option(min=1, help="images per encode/invert/decode")] = 8,
    steps: Annotated[
        list[str] | None, typer.Option(help="S/D DDIM steps (repeatable; default 20/20)")
    ] = None,
    batches: Annotated[str, typer.Option(help="batch sizes of the per-image table")] = "1,8,16",
    repeats: Repeats = 3,
) -> None:
    """Diffusion autoencoder: a training step, images per second of encode, invert
    (``stochastic_encode``) and decode, milliseconds per image of one UNet step and of the
    encoder by batch size, and peak memory.

    The training step is the real one (augmented batch from constructed slices, forward,
    backward, gradient clip, Adam, EMA). Inference runs on random 64×64 images with DDIM step
    counts ``S/D`` (Hide-and-Seek's default 20/20; the paper's 250/100 takes minutes). Peak
    memory is the process's maximum resident set size after each stage.
    """
    from wsbench.plugins.common.dae.training import model_key, new_session, train_config
    from wsbench.plugins.common.dae.training import train_step as one_step

    use_threads(threads)
    train = train_config(config, batch_size=batch)
    session = new_session(model_key("speed", train), train)
    slices = random_slices(5 * 16, 0).reshape(16, 5, SLICE, SLICE)
    vertebrae = [
        TrainingVertebra(VertebraKey("speed", f"s{i}", "L3"), s, s > 150, (0.8, 0.8), None)
        for i, s in enumerate(slices)
    ]
    model = session.model
    record: dict[str, Any] = {"config": config, "threads": threads, **model.parameter_count()}
    record["train_batch"] = batch
    record["train_step_s"] = round(median_seconds(lambda: one_step(session, vertebrae), repeats), 3)
    record["peak_rss_mb_after_training"] = peak_rss_mb()
    model.eval()
    size = model.config.image_size
    x = torch.rand(infer_batch, 1, size, size) * 2 - 1
    record["infer_batch"] = infer_batch
    with torch.inference_mode():
        z = model.encode(x)
        encode = median_seconds(lambda: model.encode(x), repeats)
        record["encode_images_per_s"] = round(infer_batch / encode, 1)
        for text in steps or ["20/20"]:
            stochastic, decode = (int(part) for part in text.split("/"))
            invert_s = median_seconds(lambda n=stochastic: model.stochastic_encode(x, z, n),
                                      repeats, warmup=0)  # fmt: skip
            decode_s = median_seconds(lambda n=decode: model.decode(x, z, n), repeats, warmup=0)
            record[f"invert_{stochastic}_images_per_s"] = round(infer_batch / invert_s, 2)
            record[f"decode_{decode}_images_per_s"] = round(infer_batch / decode_s, 2)
        table = {}
        for size_b in (int(b) for b in batches.split(",")):
            xb, zb = torch.randn(size_b, 1, size, size), torch.randn(size_b, model.config.z_dim)
            unet = median_seconds(lambda xb=xb, zb=zb: model.noise(xb, 500, zb), repeats, 2)
            enc = median_seconds(lambda xb=xb: model.encode(xb), repeats, 2)
            table[size_b] = {"unet_step_ms_per_image": round(1000 * unet / size_b, 2),
                             "encoder_ms_per_image": round(1000 * enc / size_b, 2)}  # fmt: skip
        record["by_batch"] = table
    record["peak_rss_mb"] = peak_rss_mb()
    emit(record)


@app.command()
def medsam(
    threads: Threads = 2,
    repeats: Annotated[int, typer.Option(min=1, help="timed single-vertebra calls")] = 3,
    batch: Annotated[int, typer.Option(min=1, help="vertebrae per encoder batch")] = 2,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="random-weight ViT-B, written on first use and kept [default: "
            "$WSBENCH_CACHE/benchmarks/medsam_random_vit_b.pth]"
        ),
    ] = None,
) -> None:
    """Seconds per vertebra of the MedSAM plugin with a full-size ViT-B.

    The weights are random (speed does not depend on them): segment-anything's
    ``sam_model_registry["vit_b"]()`` is saved once as a checkpoint (375 MB) and loaded through
    the plugin's own loader. Constructed 64×64 slices are segmented one by one (what a run does)
    and in encoder batches of ``--batch``; one encoder and one decoder pass are timed alone.
    """
    from wsbench.plugins.medsam import MedSAM, loose_box, preprocess, scale_box

    use_threads(threads)
    checkpoint = checkpoint or cache_root() / "benchmarks" / "medsam_random_vit_b.pth"
    if not checkpoint.exists():
        from segment_anything import sam_model_registry

        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(sam_model_registry["vit_b"]().state_dict(), checkpoint)
    load_s, method = seconds_and_result(lambda: MedSAM(checkpoint=str(checkpoint)))
    samples = [synthetic_sample(i) for i in range(max(repeats, batch) + 1)]
    warmup = seconds(lambda: method.segment(samples[0]))
    single = [seconds(lambda s=s: method.segment(s)) for s in samples[1 : repeats + 1]]
    rss_single = peak_rss_mb()
    sample, size = samples[0], method.architecture.img_size
    x = torch.from_numpy(preprocess(sample.image, method.window, size))
    box = scale_box(loose_box(sample.body_mask, (5, 5)), sample.body_mask.shape, size)
    with torch.inference_mode():
        encoder, embedding = seconds_and_result(lambda: method.sam.image_encoder(x[None]))
        decoder = seconds(lambda: method.decode(embedding, box, sample.body_mask.shape))
    chosen = samples[:batch]
    batched = seconds(lambda: method.segment_many([s.image for s in chosen],
                                                  [s.body_mask for s in chosen],
                                                  [s.spacing for s in chosen]))  # fmt: skip
    emit({"architecture": method.architecture.name, "threads": threads,
          "load_s": round(load_s, 2), "warmup_s": round(warmup, 2),
          "per_vertebra_s": [round(s, 2) for s in single],
          "per_vertebra_median_s": round(statistics.median(single), 2),
          "encoder_s": round(encoder, 2), "decoder_s": round(decoder, 4),
          "peak_rss_mb_single": rss_single, "batch": batch,
          "batched_per_vertebra_s": round(batched / batch, 2),
          "peak_rss_mb": peak_rss_mb()})  # fmt: skip


@app.command("preprocess")
def preprocess_probe(subjects: Subjects = 4, shape: Shape = (256, 256, 160)) -> None:
    """Preprocessing throughput (vertebrae per second) through the in-house adapter, cold and
    cached.

    Constructed subjects (five box vertebrae L1–L5 with posterior rings, int16 on a 0.7 × 0.7 ×
    1.5 mm grid) are written with ``write_inhouse``; ``InHouseDataset.prepare()`` is timed with an
    empty cache (hashing, NIfTI decoding, resampling, cropping) and again (cached). With the real
    TPTBox sample present, also that sample laid out in BIDS naming.
    """
    from wsbench.datasets.inhouse import InHouseDataset
    from wsbench.datasets.inhouse.layout import write_inhouse

    record: dict[str, Any] = {"subjects": subjects, "shape": list(shape)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inhouse(folder / "synthetic", lumbar_subjects(subjects, shape, 3))
        adapter = InHouseDataset(root=folder / "synthetic", cache_dir=folder / "cache")
        record["synthetic"] = cold_and_cached(adapter.prepare)
        if TPTBOX.is_dir():
            tptbox_tree(folder / "tptbox")
            adapter = InHouseDataset(root=folder / "tptbox", cache_dir=folder / "cache-tptbox")
            record["real_tptbox_73x47x73"] = cold_and_cached(adapter.prepare)
    emit(record)


def tptbox_tree(root: Path) -> None:
    """The real TPTBox sample in the in-house BIDS naming (symlinks), with a labels.csv."""
    names = {
        "rawdata/sub-ct/sub-ct_ct.nii.gz": "sub-ct_label-22_ct.nii.gz",
        "derivatives/sub-ct/sub-ct_seg-vert_msk.nii.gz": "sub-ct_seg-vert_label-22_msk.nii.gz",
        "derivatives/sub-ct/sub-ct_seg-subreg_msk.nii.gz": "sub-ct_seg-subreg_label-22_msk.nii.gz",
    }
    for target, name in names.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        (root / target).symlink_to(TPTBOX / name)
    (root / "labels.csv").write_text("subject,vertebra,label\nct,L3,healthy\n")


@app.command()
def tcia(
    subjects: Subjects = 4,
    shape: Shape = (256, 256, 160),
    layout: Annotated[str, typer.Option(help="download layout: nbia or idc")] = "nbia",
) -> None:
    """TCIA adapter throughput (vertebrae per second), cold and cached, and the derived-body
    Dice.

    The constructed subjects of the ``preprocess`` probe are written as a Spine-Mets-CT-SEG
    download (DICOM CT series, DICOM-SEG, clinical xlsx; whole-vertebra masks only), then
    ``TciaDataset.prepare()`` is timed with an empty cache (header scan, hashing, DICOM and SEG
    decoding, body derivation, resampling) and again (header scan and hashing only). With the
    real TPTBox sample present, also the Dice of the derived vertebral body against its true
    corpus (49 ∪ 50).
    """
    import nibabel as nib

    from wsbench.datasets.phantom.tcia_writer import write_tcia
    from wsbench.datasets.tcia import TciaDataset, derived_body_dice

    record: dict[str, Any] = {"subjects": subjects, "shape": list(shape), "layout": layout}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tcia"
        constructed = lumbar_subjects(subjects, shape, 5)
        for subject in constructed:
            subject.subreg = None  # the collection has whole-vertebra masks only
        write_tcia(root, constructed, layout=layout)
        adapter = TciaDataset(root=root, cache_dir=Path(tmp) / "cache")
        record["synthetic"] = cold_and_cached(adapter.prepare)
    if TPTBOX.is_dir():
        vert = nib.load(TPTBOX / "sub-ct_seg-vert_label-22_msk.nii.gz")
        subreg = nib.load(TPTBOX / "sub-ct_seg-subreg_label-22_msk.nii.gz")
        dice = derived_body_dice(vert, subreg)
        record["derived_body_dice_tptbox"] = {k: round(v, 3) for k, v in dice.items()}
    emit(record)


@app.command()
def phantom(
    subjects: Annotated[int | None, typer.Option(min=1, help="subjects (default: 340)")] = None,
    seed: Annotated[int | None, typer.Option(help="phantom seed (default: 0)")] = None,
    test_fraction: Annotated[
        float | None, typer.Option(help="share of test subjects (default: 0.09)")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="rendering processes")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="build into (or reuse) this WSBENCH_CACHE")
    ] = None,
    otsu: Annotated[bool, typer.Option(help="score Otsu on the test split")] = False,
) -> None:
    """Phantom build time as ``--dataset phantom`` meets it on first use (generate, write and
    preprocess, in ``--workers`` processes), the time to reuse the built and prepared phantom,
    the dataset fingerprint (first 16 hex digits: equal fingerprints, identical files) and, with
    ``--otsu``, the Otsu baseline's mean scores per category on the test split: the phantom's
    difficulty calibration.

    Without options it builds the default phantom (minutes; ``--subjects 4`` takes seconds). It
    builds into a fresh temporary cache (so nothing is reused) unless ``--cache`` is given.
    """
    from wsbench.contract import patient_hints
    from wsbench.datasets.phantom import PhantomDataset
    from wsbench.datasets.phantom.generate import default_workers

    given = {"subjects": subjects, "seed": seed, "test_fraction": test_fraction}
    options = {k: v for k, v in given.items() if v is not None}
    workers = workers or default_workers()
    with temporary_cache(cache) as where:
        adapter = PhantomDataset(cache_dir=where / "prepared", workers=workers, **options)
        build_s, data = seconds_and_result(adapter.prepare)
        reuse_s = seconds(adapter.prepare)
        counts = Counter(
            "/".join([v.split.value, v.label.value if v.label else "unlabelled",
                      v.phenotype.value if v.phenotype else "-"])
            for v in data.vertebrae
        )  # fmt: skip
        record: dict[str, Any] = {
            "options": options,
            "workers": workers,
            "folder": str(data.root) if cache else data.root.name,
            "build_and_prepare_s": round(build_s, 1),
            "reuse_s": round(reuse_s, 1),
            "fingerprint": data.fingerprint[:16],
            "vertebrae": dict(sorted(counts.items())),
            "skipped": len(data.skipped),
        }
        if otsu:
            record["otsu_test"] = otsu_scores(data, patient_hints(data.vertebrae))
    emit(record)


def otsu_scores(data, hints) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Mean Detection F1, Global Dice, false positives and predicted area of Otsu per category
    on the test split, through the harness's own segmentation and scoring."""
    import pandas as pd

    from wsbench.harness.evaluation import summarize
    from wsbench.harness.registry import load_method
    from wsbench.harness.runner import case_record, segment_vertebra

    method = load_method("otsu")()
    rows = []
    for vertebra in data.split(Split.TEST):
        seg, _ = segment_vertebra(method, vertebra, hints[vertebra.key.patient])
        rows.append(case_record(vertebra, seg.labels, True, "ok", ""))
    summary = summarize(pd.DataFrame(rows))
    wanted = summary[summary["metric"].isin(["f1", "global_dice", "fp", "pred_area_mm2"])]
    scores: dict[str, dict[str, float]] = {}
    for row in wanted.itertuples():
        scores.setdefault(row.category, {"n": int(row.n)})[row.metric] = round(row.mean, 3)
    return scores


@app.command("timeout")
def timeout_probe(
    method: Annotated[str, typer.Option(help="registered method")] = "otsu",
    dataset: Annotated[str, typer.Option(help="registered dataset (prepared, cached)")] = "phantom",
    repeats: Repeats = 5,
) -> None:
    """Cost of the per-vertebra time limit: whole runs of ``method`` on the test split, in
    this process (``--timeout 0``) and in the forked worker (the method's default limit),
    alternating; median run and segmentation seconds of each and the worker's overhead."""
    from wsbench.harness.runner import RunConfig, run

    config = RunConfig(method, dataset)
    run(config, Path(tempfile.mkdtemp()), timeout_s=0)  # warm the dataset cache
    found: dict[str, dict[str, list[float]]] = {"in_process": {}, "worker": {}}
    for _ in range(repeats):
        for mode, limit in (("in_process", 0.0), ("worker", None)):
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                result = run(config, Path(out), timeout_s=limit)
                total = time.perf_counter() - start
                timings = json.loads((result.run_dir / "manifest.json").read_text())["timings_s"]
            record = found[mode]
            record.setdefault("run_s", []).append(total)
            for stage in ("fit", "segment"):
                record.setdefault(f"{stage}_s", []).append(timings.get(stage, 0.0))
    medians = {
        mode: {k: round(statistics.median(v), 3) for k, v in record.items()}
        for mode, record in found.items()
    }
    base, worker = medians["in_process"], medians["worker"]
    emit({
        "method": method, "dataset": dataset, "repeats": repeats,
        "vertebrae": len(result.cases), **medians,
        "overhead_run_pct": round(100 * (worker["run_s"] / base["run_s"] - 1), 1),
        "overhead_segment_fit_pct": round(
            100 * ((worker["segment_s"] + worker["fit_s"]) / (base["segment_s"] + base["fit_s"])
                   - 1), 1),
    })  # fmt: skip


if __name__ == "__main__":
    app()
