"""Where trained models live, and the one way they are found.

A model is a weights file (``<kind>-<digest>.pt`` as training writes it, ``.safetensors`` in half
precision once compacted for shipping by :func:`compact_weights`, or any other suffix the card
names) with a model card beside it (``<kind>-<digest>.json`` for code, ``.md`` for people). The card
holds the model's key: its ``kind`` (``classifier``, ``dae``, …), the ``dataset_fingerprint`` of the
data it was trained on and the ``config`` that made it. A :class:`ModelStore` looks in a plugin's
shipped folder first, then in the user cache (``$WSBENCH_CACHE/models``, default
``~/.cache/wsbench/models``), and finds models by their card only (:meth:`ModelStore.find`). Runs
name the exact file they used by its identity ``<stem>-<sha256[:12]>`` (:func:`file_identity`),
which :meth:`ModelStore.resolve` turns back into the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsbench.contract import TrainedOn
from wsbench.files import atomic_path, digest

IDENTITY_HEX_DIGITS = 12
"""Hex digits of a weights file's SHA-256 kept in its identity (:func:`file_identity`)."""
HASH_CHUNK_BYTES = 1 << 20


def cache_root() -> Path:
    """The wsbench cache folder (``$WSBENCH_CACHE`` or ``~/.cache/wsbench``)."""
    return Path(os.environ.get("WSBENCH_CACHE", Path.home() / ".cache" / "wsbench")).expanduser()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(HASH_CHUNK_BYTES):
            sha.update(block)
    return sha.hexdigest()


def file_identity(path: Path) -> str:
    """``<stem>-<first 12 hex digits of the file's SHA-256>``: names one exact weights file, e.g.
    ``dae-a78ecb8779ef-1a2b3c4d5e6f`` for ``dae-a78ecb8779ef.pt``."""
    return f"{Path(path).stem}-{sha256_file(path)[:IDENTITY_HEX_DIGITS]}"


@dataclass(frozen=True)
class ModelKey:
    """Identity of a trained model: what it is, what data it saw, how it was configured."""

    kind: str
    dataset_fingerprint: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """File stem, e.g. ``classifier-3fa2c1d0e9b7``."""
        return f"{self.kind}-{digest([self.dataset_fingerprint, dict(self.config)])}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form stored in the card and the checkpoint."""
        return {
            "kind": self.kind,
            "dataset_fingerprint": self.dataset_fingerprint,
            "config": dict(self.config),
        }

    def check(self, found: Mapping[str, Any], path: Path) -> None:
        """Refuse the checkpoint at ``path`` whose stored key ``found`` differs from this one,
        saying what differs."""
        want = self.as_dict()
        if dict(found) == want:
            return
        diffs = [
            f"{name}: checkpoint has {found.get(name)!r}, expected {want[name]!r}"
            for name in want
            if found.get(name) != want[name]
        ]
        raise ValueError(
            f"checkpoint {path} was trained for another setting ({'; '.join(diffs)}); "
            "retrain with `wsbench train` or pass a checkpoint made for this dataset and config"
        )


def _card_matches(card: Mapping[str, Any], kind: str, dataset: str | None) -> bool:
    """Whether ``card`` is of ``kind`` and, when ``dataset`` is given, names it (its name or
    the start of its fingerprint, eight characters at least)."""
    if card.get("kind") != kind:
        return False
    if dataset is None:
        return True
    fingerprint = str(card.get("dataset_fingerprint", ""))
    return card.get("dataset") == dataset or (len(dataset) >= 8 and fingerprint.startswith(dataset))


UNKNOWN_DATA = "unknown"
"""What :func:`trained_on` says of a weights file without a model card."""


def trained_on(weights: Path) -> TrainedOn:
    """The data the model stored in ``weights`` was trained on, from its card (``dataset`` and
    ``dataset_fingerprint``); :data:`UNKNOWN_DATA` for a file without a card."""
    card = read_card(weights)
    fingerprint = str(card.get("dataset_fingerprint") or UNKNOWN_DATA)
    return TrainedOn(str(card.get("dataset") or fingerprint[:12]), fingerprint)


WEIGHTS_SUFFIX = ".safetensors"
"""Suffix of the compact weights format (safetensors); any other suffix is a ``torch.save`` file."""
COMPACT_DTYPES = ("float16", "bfloat16", "int8")
"""Storage dtypes :func:`save_weights` may turn float32 tensors into; ``int8`` stores weight
matrices and kernels as symmetric per-output-channel int8 (:func:`quantize_int8`) and the other
float32 tensors (biases, norms) as float16."""
INT8_SCALES = "int8_scale"
"""Tensor group of the per-channel scales of the int8-stored tensors of a safetensors file."""
RECORD_METADATA = "wsbench"
"""Header metadata entry of a safetensors weights file: the record's non-tensor values (JSON)."""
GROUP_SEPARATOR = "/"
"""Joins a tensor group and a tensor's name in a safetensors file (``state_dict/conv1.weight``)."""


class WeightsFileError(ValueError):
    """A file given as weights that is not a weights file wsbench can read."""


def load_weights(path: Path, what: str = "weights file") -> Any:
    """The record stored in ``path``, on the CPU: a safetensors file (``.safetensors``, written by
    :func:`save_weights`; half-precision tensors come back as float32) or, for any other suffix,
    the tensors and plain values ``torch.save`` wrote.

    Only tensors and plain values are read: a ``torch.save`` file holding pickled objects is
    refused, as are truncated, corrupt and foreign files, each with one line naming ``path`` as a
    ``what`` and saying what to give instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.suffix == WEIGHTS_SUFFIX:
        return read_safetensors(path, what)
    return read_torch(path, what)


def unreadable(path: Path, what: str, why: str) -> WeightsFileError:
    """The error for a ``what`` at ``path`` that cannot be read, and why."""
    return WeightsFileError(
        f"{path} is not a {what} wsbench can read: {why}. Give a file written by "
        "`wsbench train` or `wsbench compact`, or shipped with the method"
    )


def read_torch(path: Path, what: str) -> Any:
    """The tensors and plain values of a ``torch.save`` file (``weights_only``), on the CPU."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's reader fails on foreign bytes in many ways
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            why = "it holds pickled Python objects, which wsbench never loads"
        else:
            why = "it is truncated, corrupt or not a PyTorch file"
    raise unreadable(path, what, why)


def read_safetensors(path: Path, what: str) -> dict[str, Any]:
    """The record :func:`save_weights` wrote to ``path``: its JSON values with its tensors put
    back in place, float16/bfloat16 ones as float32."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(path)
    except Exception as exc:  # the reader's errors for bad headers and short files vary
        raise unreadable(
            path, what, f"it is truncated, corrupt or not safetensors ({exc})"
        ) from exc
    if RECORD_METADATA not in metadata:
        raise unreadable(path, what, f"its header has no {RECORD_METADATA!r} metadata")
    record = json.loads(metadata[RECORD_METADATA])
    prefix = INT8_SCALES + GROUP_SEPARATOR
    scaled = [name for name in tensors if name.startswith(prefix)]
    scales = {name.removeprefix(prefix): tensors.pop(name) for name in scaled}
    for name, tensor in sorted(tensors.items()):
        if name in scales:
            tensor = dequantize_int8(tensor, scales[name])
        elif tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        group, _, leaf = name.rpartition(GROUP_SEPARATOR)
        (record.setdefault(group, {}) if group else record)[leaf] = tensor
    return record


def quantize_int8(tensor: Any) -> tuple[Any, Any]:
    """``(int8 values, float32 scales)`` of a float32 tensor quantized symmetrically per output
    channel (axis 0): scale = max |w| of the channel / 127, values = round(w / scale) (torch's
    own ``quantize_per_channel`` computes the same but is deprecated)."""
    import torch

    channels = tensor.reshape(len(tensor), -1).abs().amax(dim=1)
    scales = torch.where(channels > 0, channels / 127.0, torch.ones_like(channels))
    shape = (len(tensor),) + (1,) * (tensor.dim() - 1)
    values = torch.round(tensor / scales.reshape(shape)).clamp(-127, 127).to(torch.int8)
    return values, scales


def dequantize_int8(values: Any, scales: Any) -> Any:
    """The float32 tensor :func:`quantize_int8` stored as ``values`` and ``scales``."""
    shape = (len(scales),) + (1,) * (values.dim() - 1)
    return values.float() * scales.float().reshape(shape)


def is_tensor_group(value: Any) -> bool:
    """Whether ``value`` is a non-empty dict of tensors (such as a state dict)."""
    import torch

    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(item, torch.Tensor) for item in value.values())
    )


def save_weights(record: Mapping[str, Any], path: Path, dtype: str | None = None) -> None:
    """Write ``record`` to ``path`` (atomically) as safetensors, read back by
    :func:`load_weights`.

    Its tensors (top-level values, and those of top-level dicts of tensors such as
    ``state_dict``) are stored as tensors, float32 ones as ``dtype`` (one of
    :data:`COMPACT_DTYPES`) when given; with ``int8`` every floating-point weight matrix or
    kernel is stored by :func:`quantize_int8`. All other values go as JSON into the header's
    :data:`RECORD_METADATA` entry. A float32 value beyond float16's range refuses ``float16``
    (and ``int8``, whose small tensors are float16).
    """
    import torch
    from safetensors.torch import save_file

    if dtype is not None and dtype not in COMPACT_DTYPES:
        raise ValueError(f"dtype {dtype!r} for {path}: choose one of {', '.join(COMPACT_DTYPES)}")
    int8 = dtype == "int8"
    target = torch.float16 if int8 else getattr(torch, dtype) if dtype else torch.float32
    flat: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for name, value in record.items():
        if isinstance(value, torch.Tensor):
            flat[name] = value
        elif is_tensor_group(value):
            flat.update({f"{name}{GROUP_SEPARATOR}{leaf}": t for leaf, t in value.items()})
        else:
            values[name] = value
    tensors = {}
    for name, tensor in flat.items():
        tensor = tensor.detach().cpu()
        if int8 and tensor.is_floating_point() and tensor.dim() >= 2:
            scale_name = f"{INT8_SCALES}{GROUP_SEPARATOR}{name}"
            tensors[name], tensors[scale_name] = quantize_int8(tensor.float())
            continue
        if tensor.dtype == torch.float32 and target != torch.float32:
            largest = float(tensor.abs().max()) if tensor.numel() else 0.0
            if largest > torch.finfo(target).max:
                raise ValueError(
                    f"{name} in {path} reaches {largest:.3g}, beyond float16's range: "
                    "store it as bfloat16"
                )
            tensor = tensor.to(target)
        tensors[name] = tensor.contiguous().clone()
    try:
        metadata = {RECORD_METADATA: json.dumps(values)}
    except TypeError as exc:
        raise ValueError(
            f"cannot write {path} as safetensors: {exc}; it holds tensors, dicts of tensors "
            "and JSON values only (keep training states with optimiser state as .pt)"
        ) from exc
    with atomic_path(path) as partial:
        save_file(tensors, partial, metadata=metadata)


def stored_float_dtypes(path: Path) -> str:
    """The dtypes the weights of the safetensors file ``path`` are stored in (its floating-point
    and int8 tensors), e.g. ``float16``, ``float16, float64`` or ``float16, float32, int8``."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(path).values()
    return ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors
                             if t.is_floating_point() or t.dtype == torch.int8}))  # fmt: skip


def compact_weights(path: Path, dtype: str = "float16") -> Path:
    """Rewrite the model at ``path`` (with its card) for shipping: ``<stem>.safetensors`` beside
    it, float32 tensors stored as ``dtype``, and the card's ``file``, ``dtype`` (the stored
    floating-point dtypes), ``sha256`` and ``compacted_from`` (the identity of ``path``) updated.
    ``path`` itself is left in place."""
    path = Path(path)
    card = read_card(path)
    if not card:
        raise FileNotFoundError(
            f"no model card {path.with_suffix('.json')} beside {path}: compact models that "
            "`wsbench train` wrote (the card is where the compacted file is named)"
        )
    compact = path.with_suffix(WEIGHTS_SUFFIX)
    source = file_identity(path)
    save_weights(load_weights(path), compact, dtype)
    key = ModelKey(card["kind"], card["dataset_fingerprint"], card["config"])
    kept = {k: v for k, v in card.items() if k not in ("title", "file", *key.as_dict())}
    facts = {**kept, "dtype": stored_float_dtypes(compact), "sha256": sha256_file(compact),
             "compacted_from": source}  # fmt: skip
    write_card(compact, key, card["title"], facts)
    return compact


def read_card(weights: Path) -> dict[str, Any]:
    """The JSON model card beside ``weights`` (``{}`` when there is none)."""
    card = Path(weights).with_suffix(".json")
    return json.loads(card.read_text()) if card.exists() else {}


def weights_of(card: Path) -> Path:
    """The weights file a card describes: the ``file`` it names, else ``<stem>.pt``."""
    record = json.loads(card.read_text())
    return card.with_name(record.get("file") or f"{card.stem}.pt")


def write_card(checkpoint: Path, key: ModelKey, title: str, facts: Mapping[str, Any]) -> None:
    """Write the model card (``.md`` and ``.json``) beside ``checkpoint``.

    ``facts["extends"]`` names the stem of a shorter run this one continues; :meth:`ModelStore.find`
    then prefers this one."""
    record = {"title": title, **key.as_dict(), "file": checkpoint.name, **dict(facts)}
    checkpoint.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in record.items() if name != "title"]
    checkpoint.with_suffix(".md").write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class ModelStore:
    """The folders one plugin's models are found in: its ``shipped`` folder (weights inside the
    package), then the user cache, where new models are written."""

    shipped: Path | None = None

    @property
    def cache(self) -> Path:
        """The user cache's model folder."""
        return cache_root() / "models"

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where models are looked for, in order."""
        return (self.shipped, self.cache) if self.shipped is not None else (self.cache,)

    def find(
        self, kind: str, fingerprint: str, config: Mapping[str, Any] | None = None
    ) -> Path | None:
        """The model of ``kind`` trained on data ``fingerprint`` (and made with exactly
        ``config`` when given): the first folder holding one wins.

        Within a folder a run that a longer run extends (``extends`` on the longer one's card)
        gives way to it. Several unrelated matches in one folder raise ``ValueError`` naming them,
        so that which weights a run uses never depends on file dates.
        """
        wanted = None if config is None else json.loads(json.dumps(dict(config), default=str))
        for folder in self.folders:
            cards = {}
            for card_path in sorted(folder.glob(f"{kind}-*.json")):
                card, path = json.loads(card_path.read_text()), weights_of(card_path)
                same = card.get("kind") == kind and card.get("dataset_fingerprint") == fingerprint
                if same and path.is_file() and (wanted is None or card.get("config") == wanted):
                    cards[path] = card
            extended = {card.get("extends") for card in cards.values()}
            latest = [path for path in cards if path.stem not in extended]
            if len(latest) > 1:
                listed = "; ".join(
                    f"{p.name} ({cards[p].get('steps', '?')} steps, "
                    f"seed {cards[p].get('seed', '?')})"
                    for p in latest
                )
                raise ValueError(
                    f"{len(latest)} unrelated {kind} models in {folder} were trained on this "
                    f"dataset (fingerprint {fingerprint}): {listed}; choose one with "
                    "`--checkpoint PATH`, or move the others out of the folder"
                )
            if latest:
                return latest[0]
        return None

    def trained_for(self, kind: str) -> list[str]:
        """The datasets a model of ``kind`` is stored for, as ``name (shipped|cache)`` from the
        cards, shipped first."""
        found = []
        for folder in self.folders:
            where = "shipped" if folder == self.shipped else "cache"
            for card_path in sorted(folder.glob(f"{kind}-*.json")):
                card = json.loads(card_path.read_text())
                if card.get("kind") == kind and weights_of(card_path).is_file():
                    name = card.get("dataset") or str(card.get("dataset_fingerprint", "?"))[:12]
                    found.append(f"{name} ({where})")
        return list(dict.fromkeys(found))

    def transfer_model(self, kind: str, dataset: str | None = None) -> Path:
        """The model of ``kind`` a transfer run uses: the one whose card says it was trained on
        ``dataset`` (a name such as ``phantom``, or the start of a fingerprint; the first folder
        holding one wins), or the shipped one when ``dataset`` is ``None``.

        ``FileNotFoundError`` lists what is stored when there is none; ``ValueError`` names the
        candidates when a folder holds several."""
        folders = self.folders if dataset is not None else (self.shipped,) * bool(self.shipped)
        for folder in folders:
            found = [
                weights_of(card_path)
                for card_path in sorted(folder.glob(f"{kind}-*.json"))
                if _card_matches(json.loads(card_path.read_text()), kind, dataset)
                and weights_of(card_path).is_file()
            ]
            if len(found) > 1:
                raise ValueError(
                    f"{len(found)} {kind} models in {folder} match {dataset or 'shipped'!r}: "
                    f"{', '.join(p.name for p in found)}; choose one with `--checkpoint PATH`"
                )
            if found:
                return found[0]
        stored = ", ".join(self.trained_for(kind)) or "none"
        wanted = f"trained on {dataset!r}" if dataset else "shipped"
        raise FileNotFoundError(
            f"no {kind} model {wanted} in {' or '.join(map(str, folders or self.folders))} "
            f"(stored for: {stored}); name one of those with `-p model=NAME`, or pass "
            "--checkpoint PATH"
        )

    def new_path(self, key: ModelKey, suffix: str = ".pt") -> Path:
        """Where to write a freshly trained model for ``key`` (in the cache; folder created)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        return self.cache / f"{key.stem}{suffix}"

    def resolve(self, reference: str | Path) -> Path:
        """The weights file ``reference`` names: a path, or an identity ``<stem>-<sha256[:12]>``
        as run manifests record it (looked up in :attr:`folders`, its hash checked)."""
        path = Path(reference).expanduser()
        if path.is_file():
            return path
        stem, _, sha = str(reference).rpartition("-")
        if stem and len(sha) == IDENTITY_HEX_DIGITS:
            for folder in self.folders:
                card = folder / f"{stem}.json"
                named = [weights_of(card)] if card.is_file() else []
                for candidate in (*named, folder / f"{stem}.pt"):  # .pt: from before compaction
                    if candidate.is_file() and sha256_file(candidate).startswith(sha):
                        return candidate
        where = ", ".join(str(f) for f in self.folders)
        raise FileNotFoundError(
            f"checkpoint {reference!s} is neither a file nor the identity of a model in {where}"
        )
