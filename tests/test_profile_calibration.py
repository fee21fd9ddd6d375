"""The profiler warns (one line) when a finished table misses its own calibration configs."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
from sparsesearch.latency import CalibrationWarning
from sparsesearch.latency.fit import warn_on_calibration


def _rt(res: tuple[int, int], errors: list[float]) -> SimpleNamespace:
    checks = [
        {"genome": [i, 0], "sum_of_parts_ms": 10.0, "measured_ms": 10.0, "error_pct": e} for i, e in enumerate(errors)
    ]
    return SimpleNamespace(resolution=res, correction={"offset_ms": 0.0, "scale": 1.0, "calibration": checks})


def test_warns_once_per_resolution_that_misses_its_calibration() -> None:
    tables = [_rt((256, 256), [3.0, -9.9]), _rt((192, 192), [34.43, 4.0, -12.0]), _rt((160, 160), [])]
    with pytest.warns(CalibrationWarning) as caught:
        warn_on_calibration(tables)
    messages = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    assert len(messages) == 1
    assert "192x192" in messages[0] and "+34.4%" in messages[0] and "[0, 0]" in messages[0]
    assert "\n" not in messages[0] and "--rounds" in messages[0]


def test_silent_within_tolerance_and_without_calibration() -> None:
    tables = [_rt((256, 256), [9.99, -10.0]), SimpleNamespace(resolution=(224, 224), correction={})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_on_calibration(tables)
    with pytest.warns(CalibrationWarning, match="-6.0%"):
        warn_on_calibration([_rt((256, 256), [-6.0])], tolerance_pct=5.0)
