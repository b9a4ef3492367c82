"""Harness post-processing: eroded body and minimum component size, on exact masks."""

from __future__ import annotations

import numpy as np

from wsbench.harness.postprocess import eroded_body, postprocess


def test_body_eroded_by_two_pixels() -> None:
    body = np.zeros((10, 10), bool)
    body[1:9, 1:9] = True
    expected = np.zeros((10, 10), bool)
    expected[3:7, 3:7] = True
    assert np.array_equal(eroded_body(body), expected)


def test_prediction_outside_eroded_body_is_removed() -> None:
    body = np.zeros((12, 12), bool)
    body[1:11, 1:11] = True
    labels = np.zeros((12, 12), np.uint8)
    labels[1:6, 3:6] = 2  # 15 px, rows 1-2 fall outside the eroded body [3, 9)
    expected = np.zeros((12, 12), np.uint8)
    expected[3:6, 3:6] = 2
    assert np.array_equal(postprocess(labels, body), expected)


def test_components_below_five_pixels_are_dropped_per_label() -> None:
    body = np.ones((16, 16), bool)
    labels = np.zeros((16, 16), np.uint8)
    labels[4, 4:8] = 1  # 4 px lytic: dropped
    labels[8, 4:9] = 1  # 5 px lytic: kept
    labels[11, 4] = 2  # 1 px blastic diagonal to...
    labels[12, 5] = 2  # ...another: 8-connected, 2 px: dropped
    labels[10:12, 10:13] = 2  # 6 px blastic: kept
    expected = np.zeros((16, 16), np.uint8)
    expected[8, 4:9] = 1
    expected[10:12, 10:13] = 2
    assert np.array_equal(postprocess(labels, body), expected)


def test_diagonal_pixels_form_one_component() -> None:
    body = np.ones((12, 12), bool)
    labels = np.zeros((12, 12), np.uint8)
    for i in range(5):
        labels[3 + i, 3 + i] = 1
    assert np.array_equal(postprocess(labels, body), labels)


def test_touching_lytic_and_blastic_are_sized_separately() -> None:
    body = np.ones((12, 12), bool)
    labels = np.zeros((12, 12), np.uint8)
    labels[5, 3:8] = 1  # 5 px
    labels[6, 3:7] = 2  # 4 px touching it: dropped on its own size
    expected = np.zeros((12, 12), np.uint8)
    expected[5, 3:8] = 1
    out = postprocess(labels, body)
    assert out.dtype == np.uint8
    assert np.array_equal(out, expected)
