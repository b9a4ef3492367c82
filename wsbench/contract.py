"""The contract between datasets, methods and the harness.

Data flows one way: a dataset adapter yields :class:`PreparedVertebra` records; the harness
splits them into a :class:`TrainingSet` (images, body masks, vertebra-level labels — no lesion
masks, by construction) for ``Method.fit`` and :class:`EvaluationCase` records whose
:class:`VertebraSample` is what ``Method.segment`` sees and whose reference lesions only the
evaluator reads.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

BACKGROUND, LYTIC, BLASTIC = 0, 1, 2
"""Lesion label values of every label map in wsbench."""

N_CENTRAL_SLICES = 5
"""Number of central sagittal slices kept per vertebra; index 2 is the mid-sagittal slice."""

GRID_MM = 0.8
"""Spacing of the isotropic PSR grid every vertebra is resampled onto (paper Table 3), so the
distance between neighbouring sagittal slices unless a crop's geometry says otherwise."""

SLICE_STEP = 8
"""Default distance between the slices of a k-slice evaluation, in slices of the grid: 6.4 mm,
so that five slices span ±12.8 mm, the central part of a lumbar body (about 40 mm wide), and
three span ±6.4 mm."""


def slice_offsets(slices: int, step: int) -> list[int]:
    """Offsets from the mid-sagittal slice of the ``slices`` evaluated slices (centre ± j·step),
    in slab order; ValueError naming the value unless ``slices`` is odd and both are ≥ 1."""
    if slices < 1 or slices % 2 == 0:
        raise ValueError(f"--slices {slices}: give an odd number ≥ 1 (the centre and pairs)")
    if step < 1:
        raise ValueError(f"--slice-step {step}: give a whole number of slices ≥ 1")
    half = slices // 2
    return [j * step for j in range(-half, half + 1)]


def central_slices_needed(slices: int, step: int) -> int:
    """Central slices a dataset must deliver for a ``slices``-slice evaluation at ``step``: the
    slab and the two neighbours either side that each evaluated slice's stack holds."""
    offsets = slice_offsets(slices, step)
    return offsets[-1] - offsets[0] + N_CENTRAL_SLICES


def as_slab(slices: Sequence[np.ndarray]) -> np.ndarray:
    """Per-slice arrays as one ``(K, H, W)`` slab; a single slice stays the 2D array it is (the
    single-slice evaluation's shape)."""
    return slices[0] if len(slices) == 1 else np.stack(slices)


class WeakLabel(str, Enum):
    """Vertebra-level label: the only supervision a method may learn from."""

    HEALTHY = "healthy"
    MALIGNANT = "malignant"

    @classmethod
    def parse(cls, value: object) -> WeakLabel:
        """Read ``healthy``/``malignant`` or ``0``/``1`` (any case, str or number)."""
        text = str(value).strip().lower()
        if text in {"0", "0.0", "healthy"}:
            return cls.HEALTHY
        if text in {"1", "1.0", "malignant"}:
            return cls.MALIGNANT
        raise ValueError(f"label {value!r} is neither healthy/malignant nor 0/1")


class Phenotype(str, Enum):
    """Lesion phenotype of a malignant vertebra (patient-level hint in the paper)."""

    LYTIC = "lytic"
    BLASTIC = "blastic"
    MIXED = "mixed"

    @classmethod
    def parse(cls, value: object) -> Phenotype | None:
        """Read ``lytic``/``blastic``/``mixed``; empty or NaN gives ``None``."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        text = str(value).strip().lower()
        if text in {"", "nan", "none"}:
            return None
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"phenotype {value!r} is not one of lytic, blastic, mixed") from None

    @classmethod
    def combine(cls, phenotypes: Iterable[Phenotype | None]) -> Phenotype | None:
        """One patient's phenotype from its vertebrae's: the only one present, ``MIXED`` when
        several are, ``None`` when none is."""
        present = {p for p in phenotypes if p is not None}
        if len(present) > 1:
            return cls.MIXED
        return next(iter(present), None)


class Split(str, Enum):
    """Subject-level split."""

    TRAIN = "train"
    TEST = "test"


@dataclass(frozen=True, order=True)
class VertebraKey:
    """Identifies one vertebra: dataset, subject (with optional session) and level (``L3``)."""

    dataset: str
    subject: str
    level: str
    session: str = ""

    @property
    def id(self) -> str:
        """File-name-safe unique id, e.g. ``phantom_s007_L3``."""
        parts = [self.dataset, self.subject, self.session, self.level]
        return "_".join(p for p in parts if p)

    @property
    def patient(self) -> tuple[str, str]:
        """``(dataset, subject)``: the patient the vertebra belongs to, across sessions."""
        return (self.dataset, self.subject)


@dataclass(frozen=True)
class VertebraSample:
    """What ``Method.segment`` receives for one vertebra (never any lesion mask).

    ``image`` is the mid-sagittal slice (or, in a k-slice evaluation, one of the slices either
    side of it; float32, HU where the source is HU), ``body_mask`` the vertebral-body mask on
    the same grid; ``stack``/``stack_body`` hold the five sagittal slices centred on it (index 2
    == ``image``) for methods that use neighbouring slices.
    """

    key: VertebraKey
    image: np.ndarray
    body_mask: np.ndarray
    spacing: tuple[float, float]
    stack: np.ndarray
    stack_body: np.ndarray
    phenotype: Phenotype | None = None

    def copy(self) -> VertebraSample:
        """A copy whose arrays a method may change without touching the original."""
        arrays = ("image", "body_mask", "stack", "stack_body")
        return replace(self, **{name: getattr(self, name).copy() for name in arrays})


@dataclass(frozen=True, slots=True)
class TrainingVertebra:
    """One training vertebra: its central slices, body masks, weak label and its patient's
    phenotype hint (:func:`patient_hints`, as a run gives it) — nothing else."""

    key: VertebraKey
    slices: np.ndarray
    body: np.ndarray
    spacing: tuple[float, float]
    label: WeakLabel | None
    hint: Phenotype | None = None


class TrainingSet(Sequence[TrainingVertebra]):
    """The weak training view of a dataset's training split.

    It is built from :class:`TrainingVertebra` records only, which have no lesion field, so no
    lesion mask is reachable from it.
    """

    __slots__ = ("_items", "fingerprint", "name")

    def __init__(self, name: str, fingerprint: str, items: Sequence[TrainingVertebra]) -> None:
        self.name = name
        self.fingerprint = fingerprint
        self._items: tuple[TrainingVertebra, ...] = tuple(items)
        for item in self._items:
            if type(item) is not TrainingVertebra:
                raise TypeError(f"TrainingSet accepts TrainingVertebra only, got {type(item)}")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> TrainingVertebra:  # type: ignore[override]
        return self._items[index]

    def __iter__(self) -> Iterator[TrainingVertebra]:
        return iter(self._items)

    def labelled(self) -> TrainingSet:
        """The subset with a known weak label."""
        kept = [v for v in self._items if v.label is not None]
        return TrainingSet(self.name, self.fingerprint, kept)

    def where(self, label: WeakLabel) -> TrainingSet:
        """The subset with the given weak label."""
        kept = [v for v in self._items if v.label == label]
        return TrainingSet(self.name, self.fingerprint, kept)

    def labels(self) -> np.ndarray:
        """Weak labels as 0 (healthy) / 1 (malignant); -1 where unknown."""
        codes = {WeakLabel.HEALTHY: 0, WeakLabel.MALIGNANT: 1, None: -1}
        return np.array([codes[v.label] for v in self._items], dtype=np.int64)


@dataclass(frozen=True)
class PreparedVertebra:
    """One preprocessed vertebra as an adapter delivers it (lesions only where known).

    Arrays are ``(n, H, W)``: the central ``n`` sagittal slices of the 64³ body crop (five, or
    more for a k-slice evaluation); index ``n // 2`` is the mid-sagittal slice. ``lesions`` is
    uint8 0/1/2 or ``None`` when the source has no lesion masks. ``geometry`` records what is
    needed to write a mask back into the source volume.
    """

    key: VertebraKey
    split: Split
    label: WeakLabel | None
    phenotype: Phenotype | None
    slices: np.ndarray
    body: np.ndarray
    spacing: tuple[float, float]
    lesions: np.ndarray | None = None
    geometry: Mapping[str, Any] = field(default_factory=dict)

    @property
    def mid(self) -> int:
        """Index of the mid-sagittal slice in the arrays."""
        return self.slices.shape[0] // 2

    def around(self, offset: int) -> slice:
        """The five slices centred ``offset`` slices from the mid-sagittal one; ValueError naming
        the vertebra when the arrays do not hold them."""
        first = self.mid + offset - N_CENTRAL_SLICES // 2
        if first < 0 or first + N_CENTRAL_SLICES > self.slices.shape[0]:
            raise ValueError(
                f"vertebra {self.key.id} has {self.slices.shape[0]} central slices, too few for a "
                f"stack around slice {offset:+d}; prepare it with more (PreprocessParams.n_slices)"
            )
        return slice(first, first + N_CENTRAL_SLICES)

    def stack_of(self, array: np.ndarray, offset: int) -> np.ndarray:
        """The five slices of ``array`` centred ``offset`` slices from the mid-sagittal one (the
        array itself when it holds just those)."""
        window = self.around(offset)
        return array if array.shape[0] == N_CENTRAL_SLICES else array[window]

    def sample(self, hint: Phenotype | None = None, offset: int = 0) -> VertebraSample:
        """The method's view of the sagittal slice ``offset`` slices from the mid-sagittal one
        (k-slice evaluation; 0 = the mid-sagittal slice), its stack centred on it, with the
        patient-level phenotype ``hint`` (:func:`patient_hints`; never this vertebra's own
        label)."""
        stack, stack_body = self.stack_of(self.slices, offset), self.stack_of(self.body, offset)
        centre = N_CENTRAL_SLICES // 2
        return VertebraSample(
            key=self.key,
            image=stack[centre],
            body_mask=stack_body[centre],
            spacing=self.spacing,
            stack=stack,
            stack_body=stack_body,
            phenotype=hint,
        )

    def training_view(self, hint: Phenotype | None = None) -> TrainingVertebra:
        """The weak view used for training: the five central slices, however many were
        prepared, with the patient-level phenotype ``hint`` (never this vertebra's own)."""
        slices, body = self.stack_of(self.slices, 0), self.stack_of(self.body, 0)
        return TrainingVertebra(self.key, slices, body, self.spacing, self.label, hint)

    @property
    def reference(self) -> np.ndarray | None:
        """Reference lesion map of the mid-sagittal slice, if known."""
        return self.reference_slab([0])

    def reference_slab(self, offsets: Sequence[int]) -> np.ndarray | None:
        """Reference lesion maps of the slices at ``offsets`` from the mid-sagittal one
        (:func:`as_slab`), if known."""
        if self.lesions is None:
            return None
        return as_slab([self.lesions[self.mid + offset] for offset in offsets])

    @property
    def slice_spacing(self) -> float:
        """Distance between neighbouring sagittal slices in mm: from the crop's affine where the
        geometry records one, else :data:`GRID_MM`."""
        if "crop_affine" not in self.geometry:
            return GRID_MM
        return float(np.linalg.norm(np.asarray(self.geometry["crop_affine"], float)[:3, 0]))


def patient_hints(vertebrae: Iterable[PreparedVertebra]) -> dict[tuple[str, str], Phenotype | None]:
    """The phenotype hint of each patient (:attr:`VertebraKey.patient`): :meth:`Phenotype.combine`
    over all its vertebrae.

    The paper's hint is a patient-level label, so every vertebra of a patient gets the same one,
    healthy vertebrae included: a per-vertebra hint would be ``None`` exactly on healthy
    vertebrae and so give away the label a method must find.
    """
    found: dict[tuple[str, str], list[Phenotype | None]] = {}
    for v in vertebrae:
        found.setdefault(v.key.patient, []).append(v.phenotype)
    return {patient: Phenotype.combine(kinds) for patient, kinds in found.items()}


class Scope(str, Enum):
    """What a :class:`Skipped` record costs: one vertebra, a file (a subject or series), or the
    dataset as a whole. ``wsbench datasets check`` exits non-zero on file and dataset faults."""

    VERTEBRA = "vertebra"
    FILE = "file"
    DATASET = "dataset"


@dataclass(frozen=True)
class Skipped:
    """A vertebra or file that could not be used, with the reason (never dropped silently)."""

    where: str
    reason: str
    scope: Scope = Scope.VERTEBRA


@dataclass
class PreparedDataset:
    """Everything an adapter delivers: vertebrae, what was skipped and a content fingerprint."""

    name: str
    fingerprint: str
    vertebrae: list[PreparedVertebra]
    skipped: list[Skipped] = field(default_factory=list)
    lesion_metrics: bool = True
    root: Path | None = None

    def training_set(self) -> TrainingSet:
        """The weak training view of the training split, each vertebra with its patient's
        phenotype hint."""
        hints = patient_hints(self.vertebrae)
        items = [v.training_view(hints[v.key.patient]) for v in self.vertebrae
                 if v.split == Split.TRAIN]  # fmt: skip
        return TrainingSet(self.name, self.fingerprint, items)

    def split(self, split: Split) -> list[PreparedVertebra]:
        """Vertebrae of one split, in a stable order."""
        return sorted((v for v in self.vertebrae if v.split == split), key=lambda v: v.key)


@dataclass(frozen=True)
class LesionScore:
    """A candidate lesion a method considered, with its score (e.g. Hide-and-Seek Δ)."""

    label: int
    size: int
    score: float
    kept: bool
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Segmentation:
    """A method's answer: label map 0/1/2 (uint8), optional score map, candidate scores and a
    refusal.

    ``candidates``, when given, is an int32 instance map on the slice grid in which value
    ``i + 1`` marks the pixels of ``lesions[i]``; the harness uses it to tell which scored
    candidates overlap a reference lesion.
    """

    labels: np.ndarray
    scores: np.ndarray | None = None
    lesions: list[LesionScore] = field(default_factory=list)
    candidates: np.ndarray | None = None
    refusal: str = ""
    """Why the method declined to look for lesions here (e.g. its classifier calls the vertebra
    healthy), with ``labels`` its answer; the harness records the vertebra as ``refused``."""


@dataclass(frozen=True)
class TrainedOn:
    """The data a model was trained on, as its model card records it.

    ``fingerprint`` is the dataset fingerprint (:attr:`PreparedDataset.fingerprint`), or
    ``external`` for a model trained outside wsbench (e.g. a foundation model's public data).
    A run whose models were not all trained on the run's own dataset is a *transfer* run.
    """

    dataset: str
    fingerprint: str


class WeightsNotSuppliedError(FileNotFoundError):
    """A method needs external weights the user has not supplied (wsbench never downloads any).

    The bench records such a method as "not run: weights not supplied" instead of failed.
    """


@dataclass(frozen=True)
class TrainOptions:
    """How ``wsbench train`` (or the harness before a run) asks a method to train its models.

    The method's own training settings are keyword parameters of its :meth:`Method.train`.
    """

    workdir: Path
    """A folder of this method's own for scratch files (models go to its model store)."""
    seed: int = 0
    resume: bool = False
    """Continue an interrupted training run instead of refusing to overwrite it."""
    progress: bool = True
    """Draw a progress bar (off in tests and library use)."""


class Method:
    """Base class of method plugins.

    Subclasses set ``name``; take their parameters as constructor keyword arguments, each stored
    in an attribute of the same name (scikit-learn's convention: :meth:`parameters` and
    :meth:`params` are read from the constructor); implement :meth:`segment`; and, when they
    learn, override :meth:`train` (long training that ``wsbench train`` runs, e.g. a diffusion
    autoencoder) and/or :meth:`fit` (what a run does before segmenting: load the trained models,
    or train quickly when none is stored). ``distinguishes_phenotype = False`` declares that the
    method returns a binary foreground (0/1) which the harness labels by the phenotype hint.
    ``bench = False`` leaves a method out of ``wsbench bench`` unless it is named (a
    configuration too slow for a routine sweep). A vertebra on which :meth:`segment` runs longer
    than ``timeout_s`` is stopped and recorded as ``timeout``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    distinguishes_phenotype: ClassVar[bool] = True
    bench: ClassVar[bool] = True
    timeout_s: ClassVar[float] = 120.0
    """Default time limit of one vertebra's :meth:`segment`, in seconds (``--timeout``
    overrides it; 0 = none): generous for a method answering in well under a second."""

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor's keyword parameters by name, with their defaults.

        A subclass whose ``__init__`` forwards ``**params`` to its parent's adds its own
        parameters (and defaults) to the parent's.
        """
        return signature_parameters(cls, "__init__", Method)

    def params(self) -> dict[str, Any]:
        """The method's parameter values, for the run manifest: each constructor parameter read
        from the attribute of the same name."""
        return {name: getattr(self, name) for name in self.parameters()}

    def models(self) -> dict[str, str]:
        """The identities of the trained weights the fitted method uses, by role (e.g.
        ``{"dae": "dae-a78ecb8779ef-<sha256[:12]>"}``), for the run manifest; ``{}`` for a
        method without weights."""
        return {}

    def trained_on(self) -> dict[str, TrainedOn]:
        """The data each of the fitted method's models was trained on, by the roles of
        :meth:`models`; a model not trained on the run's dataset makes the run a transfer run.
        ``{}`` for a method without weights."""
        return {}

    @classmethod
    def summary(cls) -> str:
        """What the method is: the first sentence of its docstring (``wsbench methods``)."""
        return first_sentence(cls.__doc__)

    @classmethod
    def needs(cls) -> str:
        """What the method needs before it can run (``wsbench methods``)."""
        return "models trained on the dataset (`wsbench train`)" if cls.learns() else "nothing"

    @classmethod
    def readiness(cls) -> str:
        """Whether it can run here now and, if not, what to do (``wsbench methods``); a method
        whose models are found per dataset says for which datasets it has them."""
        return "ready" if not cls.learns() else "trains what it needs when a run starts"

    @classmethod
    def learns(cls) -> bool:
        """True when the method overrides :meth:`fit` or :meth:`train`."""
        return cls.fit is not Method.fit or cls.train is not Method.train

    @classmethod
    def train_settings(cls) -> dict[str, inspect.Parameter]:
        """The keyword settings of :meth:`train` after ``options`` (``wsbench train -t``)."""
        found = inspect.signature(cls.train).parameters
        return {n: p for n, p in found.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def train(self, training: TrainingSet, options: TrainOptions) -> list[Path]:
        """Train the models :meth:`fit` loads and store them in the method's model store; return
        the stored files. Methods with a long training override this (``wsbench train``); the
        default runs :meth:`fit`."""
        self.fit(training, options.workdir)
        return []

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        """Prepare to segment: learn from (or load what was learnt on) the weak training view;
        ``workdir`` is a per-method scratch folder."""

    def segment(self, sample: VertebraSample) -> Segmentation | np.ndarray:
        """Label map (0/1/2, uint8, shape of ``sample.image``) for one mid-sagittal slice."""
        raise NotImplementedError


def signature_parameters(cls: type, function: str, stop: type) -> dict[str, inspect.Parameter]:
    """Named parameters of ``cls.<function>`` and, where it forwards ``**kwargs``, of the same
    function of its bases up to ``stop`` (the nearest class's default wins); ``self``,
    ``*args`` and ``**kwargs`` themselves are left out."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is stop or klass is object or function not in vars(klass):
            continue
        params = inspect.signature(vars(klass)[function]).parameters
        named = {n: p for n, p in list(params.items())[1:] if p.kind not in VARIADIC}
        found = {**named, **found}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    return found


VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


SENTENCE_END = re.compile(r"(?<=[a-z0-9)]{3}\.)\s+(?=[A-Z(])")
"""A sentence's end: a full stop after a word of three or more characters and before a capital,
so that ``et al.`` and ``Eq.`` do not end one."""


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without reST
    backticks (``""`` without a docstring)."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    text = " ".join(paragraph.replace("``", "").split())
    return SENTENCE_END.split(text, maxsplit=1)[0]


class DatasetAdapter:
    """Base class of dataset adapters: find a source's files and deliver prepared vertebrae."""

    name: ClassVar[str] = ""
    lesion_metrics: ClassVar[bool] = True
    needs_root: ClassVar[bool] = True
    root_hint: ClassVar[str] = "the folder of its files"
    """What ``--root`` must point at and where to get it (shown when ``--root`` is missing)."""
    library_options: ClassVar[tuple[str, ...]] = ()
    """Constructor parameters for library code only (objects no ``-o key=value`` can spell,
    such as preprocessing parameters): not offered as options."""

    def __init__(self, root: Path | None = None, cache_dir: Path | None = None, **options: Any):
        self.root = root
        self.cache_dir = cache_dir
        self.options = options

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """The options the adapter accepts (``-o key=value``) with their defaults: the keyword
        parameters of its constructor besides ``root`` and ``cache_dir``. An adapter declares
        each option there, typed, and forwards it to this class in ``**options``; those named in
        :attr:`library_options` are left out."""
        found = signature_parameters(cls, "__init__", DatasetAdapter)
        hidden = ("root", "cache_dir", *cls.library_options)
        return {n: p for n, p in found.items() if n not in hidden}

    @classmethod
    def summary(cls) -> str:
        """What the dataset is: the first sentence of the adapter's docstring."""
        return first_sentence(cls.__doc__)

    @classmethod
    def needs(cls) -> str:
        """What the dataset needs (``wsbench datasets``): its files (``--root``) or nothing."""
        return f"--root: {cls.root_hint}" if cls.needs_root else "nothing"

    @classmethod
    def readiness(cls) -> str:
        """Whether it can be used here now and, if not, what to do (``wsbench datasets``)."""
        return "give --root" if cls.needs_root else "ready"

    @classmethod
    def missing_root(cls, asked: str) -> str:
        """The message for a run or check of this dataset, named ``asked`` by the user, without
        ``--root``."""
        return f"dataset {asked!r} needs --root: {cls.root_hint}"

    def prepare(self) -> PreparedDataset:
        """Read, validate and preprocess the source (cached)."""
        raise NotImplementedError
