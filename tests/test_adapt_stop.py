"""Stopping a training run on SIGINT / SIGTERM: the first signal stops it after the step with its checkpoint
written, a second stops at once, and the caller's handlers are back afterwards."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import yaml
from sparsesearch.adapt import AdaptOptions, adapt
from sparsesearch.adapt.checkpoint import LAST, load_train_checkpoint
from sparsesearch.adapt.stopping import StopSignals

from .test_adapt import TINY


def test_stop_signals_ask_once_then_interrupt_and_restore_the_handlers():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    with StopSignals(enabled=False) as off:  # e.g. under DDP: nothing installed
        assert {sig: signal.getsignal(sig) for sig in before} == before and not off.requested


def test_a_signal_stops_the_run_after_the_step_with_its_checkpoint(tmp_path: Path):
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY, sort_keys=False))
    opts = AdaptOptions(
        space=str(space), data="synthetic:8", out=str(tmp_path / "run"), steps=4, batch=4, val_samples=0
    )
    handler = signal.getsignal(signal.SIGINT)

    def on_step(rec: dict) -> None:
        if rec["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        adapt(opts, progress=False, on_step=on_step)
    assert signal.getsignal(signal.SIGINT) == handler
    assert int(load_train_checkpoint(tmp_path / "run" / LAST)["train"]["step"]) == 2
    result = adapt(opts, resume=True, progress=False)
    assert result.resumed_from == 2 and result.finished and sorted(result.losses) == [3, 4]
