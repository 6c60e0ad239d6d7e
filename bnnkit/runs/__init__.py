"""One run end to end: the run directory, stages, resume, the KD teacher, the DDP wrap, the
checkpoint format, evaluating / exporting a checkpoint, and comparisons of methods."""

from bnnkit.runs.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    load_stage_init,
)
from bnnkit.runs.compare import CompareError, CompareResult, compare
from bnnkit.runs.evaluate import (
    check_data_overrides,
    evaluate_checkpoint,
    evaluate_packed,
    export_checkpoint,
    format_size_report,
)
from bnnkit.runs.run import RunResult, format_result, seed_everything, train
from bnnkit.runs.rundir import RunDirectory, RunDirectoryError, load_run, resolve_checkpoint
from bnnkit.runs.stages import model_from_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "CompareError",
    "CompareResult",
    "RunDirectory",
    "RunDirectoryError",
    "RunResult",
    "check_data_overrides",
    "compare",
    "evaluate_checkpoint",
    "evaluate_packed",
    "export_checkpoint",
    "format_result",
    "format_size_report",
    "load_checkpoint",
    "load_model_state",
    "load_run",
    "load_stage_init",
    "model_from_checkpoint",
    "resolve_checkpoint",
    "seed_everything",
    "train",
]
