"""What a training run writes as it goes: one JSON line per step in ``metrics.jsonl`` (rank 0), the same scalars
to TensorBoard with ``--tensorboard``, and a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SparseSearchError
from .checkpoint import METRICS

__all__ = ["MetricsLog", "tensorboard_writer"]


class MetricsLog:
    """The step records of rank 0: appended to `out/metrics.jsonl`, logged to `writer` (a TensorBoard
    SummaryWriter, or None) and counted on a progress bar (`bar`: None for none). Other ranks pass `main=False`
    and write nothing."""

    def __init__(self, out: Path, main: bool, writer: Any, bar: Any) -> None:
        self.out, self.writer, self.bar = out, writer, bar
        self._file = open(out / METRICS, "a") if main else None  # noqa: SIM115

    def write(self, rec: dict[str, Any]) -> None:
        """One step's record: the metrics line, TensorBoard's scalars and the bar."""
        if self._file is None:
            return
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self.writer is not None:
            _tb_log(self.writer, rec)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.1f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """The bar and the metrics file (the writer stays open for the end record)."""
        if self.bar is not None:
            self.bar.close()
        if self._file is not None:
            self._file.close()
            self._file = None

    def end(self, record: dict[str, Any]) -> None:
        """The run's end record (rank 0), and the TensorBoard writer closed."""
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            self.writer.close()


def tensorboard_writer(logdir: Path | None) -> Any:
    """A SummaryWriter (torch's, else tensorboardX's); with ``logdir`` None only checks that one exists."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        try:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]  # noqa: PLC0415
        except ImportError:
            raise SparseSearchError(
                "--tensorboard needs the tensorboard package: pip install tensorboard (or sparsesearch[tensorboard]); "
                "metrics.jsonl is written either way"
            ) from None
    return None if logdir is None else SummaryWriter(str(logdir))


def _tb_log(writer: Any, rec: dict[str, Any]) -> None:
    step = rec["step"]
    writer.add_scalar("train/loss", rec["loss"], step)
    for k, v in rec["losses"].items():
        writer.add_scalar(f"train/loss_{k}", v, step)
    writer.add_scalar("train/lr", rec["lr"], step)
    writer.add_scalar("train/images_per_s", rec["images_per_s"], step)
    for k, v in (rec.get("val") or {}).items():
        writer.add_scalar(f"val/{v['metric']}_{k}", v["value"], step)
