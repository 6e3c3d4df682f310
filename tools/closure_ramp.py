"""Choose the renderer's closure ramp (lipsync_service/core/lips.py) on held-out English speech, never on eval clips.

For each candidate ramp (probability where a closure starts to be drawn, probability where it is drawn whole) this
predicts the lip gap the renderer would draw at 25 frames/s on the speech-only files the viseme model did not train
on (viseme_run.HELD_OUT_PREFIXES), and scores it as the eval scores a video: the AUC of the gap (smallest within
+-1 frame) during t, d, n, s, z, l, th, dh over the gap during p, b, m. The gap is a nominal speaker's:
max(0, 0.03 + z * 0.012) * (1 - closure strength), z being the model's served opening. Every mel frame starts one
window, so neighbouring windows overlap; the eval's own figures on real clips stay the judge.

Usage: python tools/closure_ramp.py VISEME_NET.pt PHONES.npz [--ramp 0.08-0.3 --ramp 0.05-0.2 ...]
(VISEME_NET.pt: written by `lipsync-service train visemes`; PHONES.npz: by `lipsync-service train phones`.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lipsync_service.evaluation.visemes import ALVEOLARS, BILABIALS, auc, window_min

MEL_RATE = 80
FPS = 25
NOMINAL_MEAN, NOMINAL_SPREAD = 0.03, 0.012
DEFAULT_RAMPS = ("0.08-0.3", "0.06-0.25", "0.05-0.2", "0.04-0.15", "0.03-0.1")


def contrast(preds: list[np.ndarray], ids: list[np.ndarray], start: float, full: float,
             gain: float = 3.0) -> tuple[float, int]:
    """(bilabial contrast of the drawn gap, p/b/m frames counted) for one ramp; preds: the model's raw rows
    [N, 5] per file (z unscaled), ids: phone indices per window."""
    from lipsync_models.training.phone_labels import PHONE_INDEX

    high_ids = [PHONE_INDEX[p] for p in ALVEOLARS]
    low_ids = [PHONE_INDEX[p] for p in BILABIALS]
    high, low = [], []
    reach = round(MEL_RATE / FPS)  # +-1 video frame in mel frames
    for pred, phone in zip(preds, ids, strict=True):
        z = np.clip(gain * pred[:, 0], -3.0, 3.0)
        strength = np.clip((pred[:, 2] - start) / (full - start), 0.0, 1.0)
        gap = window_min(np.maximum(NOMINAL_MEAN + z * NOMINAL_SPREAD, 0.0) * (1.0 - strength), reach)
        high += list(gap[np.isin(phone, high_ids)])
        low += list(gap[np.isin(phone, low_ids)])
    return auc(np.array(high), np.array(low)), len(low)


def main() -> None:
    from lipsync_models.training import viseme as vm
    from lipsync_models.training.phone_labels import read_labels
    from lipsync_models.training.viseme_run import HELD_OUT_PREFIXES, gather_speech

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", type=Path)
    ap.add_argument("phones", type=Path)
    ap.add_argument("--ramp", action="append", help="START-FULL (repeatable)")
    args = ap.parse_args()
    net, recipe = vm.load_viseme(args.net)
    _, speech = read_labels(args.phones)
    parts = [p for p in gather_speech(speech) if p.group == "en" and p.name.startswith(HELD_OUT_PREFIXES)]
    preds = [vm.predict(net, p.x, recipe.pos_weight) for p in parts]
    ids = [p.ids for p in parts]
    print(f"{len(parts)} held-out English files")
    print(f"{'ramp':<12}{'contrast':>10}{'p/b/m':>8}")
    print(f"{'none':<12}{contrast(preds, ids, 2.0, 3.0)[0]:>10.3f}")
    for ramp in args.ramp or DEFAULT_RAMPS:
        start, full = (float(v) for v in ramp.split("-"))
        value, count = contrast(preds, ids, start, full)
        print(f"{ramp:<12}{value:>10.3f}{count:>8}")


if __name__ == "__main__":
    main()
