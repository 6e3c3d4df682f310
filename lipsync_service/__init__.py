"""LipSync service: re-draws the mouth in a video to match a new speech track, over gRPC."""

__version__ = "0.1.0"
FEATURE_NAME = "lipsync"
