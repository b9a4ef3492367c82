"""The contract: weak training view without lesion masks, label parsing, sample view."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fakes import TinyDataset, make_vertebra

from wsbench.contract import (
    N_CENTRAL_SLICES,
    Phenotype,
    PreparedVertebra,
    Split,
    TrainingSet,
    TrainingVertebra,
    WeakLabel,
    patient_hints,
)


def reachable_arrays(obj: object, seen: set[int] | None = None) -> list[np.ndarray]:
    """Every numpy array reachable from ``obj`` through attributes, slots and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    children: list[object] = []
    if isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (str, bytes, int, float, bool, type(None))):
        return []
    else:
        children = [getattr(obj, name) for name in getattr(type(obj), "__slots__", ())]
        children += list(getattr(obj, "__dict__", {}).values())
    return [a for child in children for a in reachable_arrays(child, seen)]


def test_training_set_reaches_no_lesion_mask() -> None:
    dataset = TinyDataset().prepare()
    marker = 77
    poisoned = [
        dataclasses.replace(v, lesions=np.full_like(v.lesions, marker)) for v in dataset.vertebrae
    ]
    dataset.vertebrae = poisoned
    training = dataset.training_set()
    arrays = reachable_arrays(training)
    assert arrays, "the training set exposes its images"
    assert not any(a.dtype == np.uint8 and (a == marker).any() for a in arrays)
    assert {f.name for f in dataclasses.fields(TrainingVertebra)} == {
        "key",
        "slices",
        "body",
        "spacing",
        "label",
        "hint",
    }


def test_training_vertebra_cannot_carry_extra_attributes() -> None:
    item = TinyDataset().prepare().training_set()[0]
    with pytest.raises((AttributeError, TypeError, dataclasses.FrozenInstanceError)):
        item.lesions = np.zeros(3)  # type: ignore[attr-defined]


def test_training_set_refuses_prepared_vertebrae() -> None:
    prepared = TinyDataset().prepare().vertebrae
    with pytest.raises(TypeError, match="TrainingVertebra"):
        TrainingSet("tiny", "f", prepared)  # type: ignore[arg-type]


def test_training_set_holds_only_train_split_and_labels() -> None:
    training = TinyDataset().prepare().training_set()
    assert len(training) == 4
    assert training.labels().tolist() == [1, 0, 1, 0]
    assert len(training.where(WeakLabel.HEALTHY)) == 2


def test_training_vertebrae_carry_their_patients_hint_healthy_ones_too() -> None:
    training = TinyDataset().prepare().training_set()
    assert [(v.key.subject, v.hint) for v in training] == [
        ("s1", Phenotype.BLASTIC),
        ("s1", Phenotype.BLASTIC),  # healthy L2 of a patient with blastic metastases
        ("s2", Phenotype.LYTIC),
        ("s2", Phenotype.LYTIC),
    ]


def test_sample_is_the_mid_slice() -> None:
    vertebra: PreparedVertebra = TinyDataset().prepare().vertebrae[0]
    sample = vertebra.sample(Phenotype.MIXED)
    mid = N_CENTRAL_SLICES // 2
    assert np.array_equal(sample.image, vertebra.slices[mid])
    assert np.array_equal(sample.body_mask, vertebra.body[mid])
    assert sample.phenotype == Phenotype.MIXED  # the hint given, not the vertebra's own blastic
    assert vertebra.sample().phenotype is None
    assert not hasattr(sample, "lesions")
    assert np.array_equal(vertebra.reference, vertebra.lesions[mid])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("healthy", WeakLabel.HEALTHY),
        ("1", WeakLabel.MALIGNANT),
        (0, WeakLabel.HEALTHY),
        ("Malignant", WeakLabel.MALIGNANT),
        (1.0, WeakLabel.MALIGNANT),
    ],
)
def test_weak_label_parse(text: object, expected: WeakLabel) -> None:
    assert WeakLabel.parse(text) == expected


def test_bad_labels_are_named() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        WeakLabel.parse("maybe")
    with pytest.raises(ValueError, match="'sclerotic'"):
        Phenotype.parse("sclerotic")
    assert Phenotype.parse(float("nan")) is None
    assert Phenotype.parse(" Mixed ") == Phenotype.MIXED


def test_patient_hints_combine_each_patients_vertebrae() -> None:
    vertebrae = [*TinyDataset().prepare().vertebrae, make_vertebra("s5", "L1", Split.TEST, None, 0)]
    assert patient_hints(vertebrae) == {
        ("tiny", "s1"): Phenotype.BLASTIC,  # blastic + healthy
        ("tiny", "s2"): Phenotype.LYTIC,
        ("tiny", "s3"): Phenotype.MIXED,  # blastic + lytic
        ("tiny", "s4"): Phenotype.MIXED,
        ("tiny", "s5"): None,  # no metastases
    }
