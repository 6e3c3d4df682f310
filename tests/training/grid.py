"""GRID clips spell their sentence in their file names (the training labels read them the same way)."""

from __future__ import annotations

from lipsync_models.training.phone_labels import grid_transcript

__all__ = ["grid_transcript"]
