#!/usr/bin/env bash
# Create the separate virtual environment that runs the independent landmark model for
# `lipsync-service eval`. mediapipe 0.10.x pins protobuf<5, which conflicts with the service's
# protobuf 6, so it cannot live in the service's venv. Face Mesh weights ship inside the wheel:
# nothing is downloaded at run time.
#
# Usage: `lipsync-service eval-env [VENV_DIR]` (runs this script)   (default: ~/.cache/lipsync-service/eval-venv)
set -euo pipefail
VENV="${1:-${HOME}/.cache/lipsync-service/eval-venv}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# 0.10.21 is the last release line that still ships the legacy `solutions.face_mesh` graph
# with its weights inside the wheel.
"$VENV/bin/pip" install -q "mediapipe==0.10.21" "numpy<2" "av>=14,<19"
"$VENV/bin/python" -c "import mediapipe as mp; mp.solutions.face_mesh.FaceMesh(static_image_mode=False).close(); print('eval venv ready:', '$VENV')"
