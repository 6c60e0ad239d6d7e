"""Diagnostics: model summary (parameters, memory, MACs/BOPs/OPs), the training-dynamics
trackers (flip, oscillation, back-and-forth, silent and dead weights), the metric names, and
the report and figures of a parsed run."""

from bnnkit.diagnostics.dynamics import (
    Dynamics,
    FlipRatio,
    laplace_entropy,
    quantization_error,
    signed_tensor,
)
from bnnkit.diagnostics.rundata import ReportError, RunData
from bnnkit.diagnostics.summary import LayerSummary, ModelSummary, summary

__all__ = [
    "Dynamics",
    "FlipRatio",
    "LayerSummary",
    "ModelSummary",
    "ReportError",
    "RunData",
    "laplace_entropy",
    "quantization_error",
    "signed_tensor",
    "summary",
]
