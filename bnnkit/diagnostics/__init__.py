"""Diagnostics: model summary (parameters, memory, MACs/BOPs/OPs), the training-dynamics
trackers (flip, oscillation, back-and-forth, silent and dead weights), the metric names, and
the report and figures of a parsed run."""

from bnnkit.diagnostics.dynamics import Dynamics
from bnnkit.diagnostics.flip_ratio import FlipRatio
from bnnkit.diagnostics.rundata import ReportError, RunData
from bnnkit.diagnostics.summary import LayerSummary, ModelSummary, summary
from bnnkit.diagnostics.weights import laplace_entropy, quantization_error, signed_tensor

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
