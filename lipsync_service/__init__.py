"""LipSync service: re-draws the mouth in a video to match a new speech track, over gRPC."""

import os

# numpy's OpenBLAS starts a thread per core that busy-waits after every matrix call. Our matrix work is tiny
# (3x3 solves, a mel filterbank) while x264, ONNX Runtime and OpenCV need the cores: on a 2-core machine
# that spinning thread burned 2 s of CPU in a 4.6 s job and cost about 10 % of the lip-sync throughput.
# Set before numpy is first imported (this package's import does not import it); an explicit value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
FEATURE_NAME = "lipsync"
