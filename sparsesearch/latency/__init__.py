"""Latency lookup tables: profile the parts of a search space's model on this machine, predict the latency of
any config as the sum of its parts, and validate predictions against end-to-end measurements.

Modules: `plan` (what a profile measures), `profile` (the profiler that measures it), `resume` (partial results),
`fit` (from measurements to figures and the correction), `meta` (what a table records), `table` (the table and
its predictions), `measure` (statistics and timers), `load` (waiting for a quiet machine), `malloc` (the
allocator setting), `env` (the machine), `structure` (block kinds of a space), `runtime` (torch or ONNX Runtime:
where parts and whole models run), `validate` and `check` (timing a table's predictions end to end)."""

from .check import TableCheck, TableSpeedError, check_table, check_timer, ensure_table_speed, reprofile_command
from .env import device_name, device_slug, environment, fingerprint, machine_slug
from .fit import CalibrationWarning
from .malloc import malloc_tuned, tune_malloc
from .measure import (
    STATISTICS,
    CpuTimer,
    CudaTimer,
    Stat,
    Timer,
    combine_rounds,
    make_timer,
    summarize,
    time_interleaved,
    time_parts,
)
from .plan import Entry, ProfileSettings, default_table_path
from .profile import Profiler, profile
from .resume import PartialProfileWarning, partial_path
from .runtime import RUNTIMES
from .table import KindTable, LatencyTable, TableMachineWarning
from .validate import (
    ValidationReport,
    ValidationRow,
    ValidationSettings,
    report_paths,
    time_configs,
    validate,
    validation_genomes,
    write_report,
)

__all__ = [
    "LatencyTable",
    "KindTable",
    "Profiler",
    "ProfileSettings",
    "Entry",
    "profile",
    "default_table_path",
    "partial_path",
    "CalibrationWarning",
    "PartialProfileWarning",
    "validate",
    "ValidationSettings",
    "time_configs",
    "validation_genomes",
    "ValidationReport",
    "ValidationRow",
    "report_paths",
    "write_report",
    "Stat",
    "Timer",
    "CpuTimer",
    "CudaTimer",
    "make_timer",
    "STATISTICS",
    "RUNTIMES",
    "summarize",
    "combine_rounds",
    "time_parts",
    "time_interleaved",
    "tune_malloc",
    "malloc_tuned",
    "device_name",
    "device_slug",
    "environment",
    "fingerprint",
    "machine_slug",
    "TableMachineWarning",
    "TableCheck",
    "TableSpeedError",
    "check_table",
    "check_timer",
    "ensure_table_speed",
    "reprofile_command",
]
