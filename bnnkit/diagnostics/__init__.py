"""Diagnostics: model summary (parameters, memory, MACs/BOPs/OPs)."""

from bnnkit.diagnostics.summary import LayerSummary, ModelSummary, summary

__all__ = ["LayerSummary", "ModelSummary", "summary"]
