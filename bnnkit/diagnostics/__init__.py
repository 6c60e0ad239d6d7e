"""Diagnostics: model summary (parameters, memory, MACs/BOPs/OPs) and training dynamics
(flip, oscillation, back-and-forth, silent and dead weights; reports and comparisons)."""

from bnnkit.diagnostics.dynamics import (
    Dynamics,
    FlipRatio,
    laplace_entropy,
    quantization_error,
    sign_input,
)
from bnnkit.diagnostics.summary import LayerSummary, ModelSummary, summary

__all__ = [
    "Dynamics",
    "FlipRatio",
    "LayerSummary",
    "ModelSummary",
    "laplace_entropy",
    "quantization_error",
    "sign_input",
    "summary",
]
