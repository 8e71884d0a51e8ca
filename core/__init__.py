"""opstrata: one OpenTelemetry-native backend for AIOps, MLOps and LLMOps."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
