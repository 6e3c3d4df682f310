"""The scores as a text table, with the target ranges beside them."""

from __future__ import annotations

import math

#: Target ranges, [low, high] (None: unbounded), written into scores.json and printed beside the measures.
TARGETS: dict[str, list[float | None]] = {
    "lip_sharpness": [0.7, 1.3],
    "rest_sharpness": [0.9, None],
    "rest_psnr_db": [35.0, None],
    "sync_r_lag0": [0.35, None],
    "sync_best_lag": [-1, 1],
}



def _target_text(low: float | None, high: float | None, unit: str = "") -> str:
    if low is not None and high is not None:
        return f"{low:g}-{high:g}{unit}"
    return f">= {low:g}{unit}" if low is not None else f"<= {high:g}{unit}"


def _within(value: float | None, low: float | None, high: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    ok = (low is None or value >= low) and (high is None or value <= high)
    return "ok" if ok else "MISS"


def _num(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    if value is None:
        return "n/a"
    return ("inf" if math.isinf(value) else format(value, fmt)) + unit


def format_table(scores: dict) -> str:
    """The scores as a small text table, with the target ranges beside them."""
    targets = scores.get("targets", TARGETS)
    r_lo, r_hi = targets["sync_r_lag0"]
    lag_lo, lag_hi = targets["sync_best_lag"]
    rows = [("lip-synced output", scores["model_output"]), ("baseline (unchanged video)", scores["baseline"])]
    if "reference" in scores:
        rows.append(("reference (real footage, own speech)", scores["reference"]))
    lines = [f"sync: mouth opening vs speech loudness ({scores['frames']} frames, {scores['duration_s']:.1f} s)",
             f"  {'':38s} {'r lag0':>7s} {'best lag':>8s} {'r best':>7s} {'frames':>6s}"]
    for name, s in rows:
        lines.append(f"  {name:38s} {s['r_lag0']:7.3f} {s['best_lag']:8d} {s['r_best']:7.3f} {s['frames']:6d}")
    out = scores["model_output"]
    lag_ok = "ok" if lag_lo <= out["best_lag"] <= lag_hi else "MISS"
    lines.append(f"  target (output): r lag0 {_target_text(r_lo, r_hi)} [{_within(out['r_lag0'], r_lo, r_hi)}], "
                 f"best lag within {lag_lo:+d}..{lag_hi:+d} [{lag_ok}]")
    fid = scores.get("fidelity")
    if fid:
        missing = fid["output_face_missing"]
        lines.append(f"fidelity: output vs unchanged input ({fid['frames']} frames with a face"
                     + (f", {missing} without one in the output" if missing else "")
                     + ")")
        lines.append(f"  {'':52s} {'value':>9s}  target")
        silence = (f"{fid['silent_frames']} frames < {fid['silence_threshold_db']:.1f} dB"
                   if fid.get("silence_threshold_db") is not None else "no envelope")
        measures = [
            ("lip sharpness (Laplacian variance, median ratio)", fid["lip_sharpness"], "", "lip_sharpness"),
            ("rest of lower face sharpness (median ratio)", fid["rest_sharpness"], "", "rest_sharpness"),
            ("rest of lower face PSNR", fid["rest_psnr_db"], " dB", "rest_psnr_db"),
            ("lip motion (mean abs frame diff, ratio)", fid["lip_motion"], "", None),
            (f"lip motion in silence ({silence})", fid["lip_motion_silent"], "", None),
            ("PSNR outside the lower face", scores["psnr_outside_lower_face_db"], " dB", None),
        ]
        for name, value, unit, key in measures:
            if key is None:
                target, verdict = "-", ""
            else:
                lo, hi = targets[key]
                target, verdict = _target_text(lo, hi, unit.strip() and " dB"), _within(value, lo, hi)
            lines.append(f"  {name:52s} {_num(value, unit=unit):>9s}  {target:10s} {verdict}".rstrip())
    else:
        lines.append(f"PSNR outside the lower face: {_num(scores['psnr_outside_lower_face_db'], unit=' dB')} "
                     f"over {scores['duration_s']:.1f} s")
    closures = scores.get("closures")
    if closures:
        first = next(iter(closures.values()))
        lines.append(f"closures: mouth closed (opening <= {first['closed_level']:.3f}) at short dips of the speech "
                     "(stops: p b m, also t d k) vs in loud speech anywhere")
        lines.append(f"  {'':38s} {'dips':>5s} {'at dips':>8s} {'anywhere':>8s} {'lift':>5s}")
        names = {"model_output": "lip-synced output", "baseline": "baseline (unchanged video)",
                 "reference": "reference (real footage, own speech)"}
        for key, c in closures.items():
            at, anywhere = c["closed_at_dips"], c["closed_in_speech"]
            lift = at / anywhere if at is not None and anywhere else None
            lines.append(f"  {names[key]:38s} {c['dips']:5d} {_num(at):>8s} {_num(anywhere):>8s} {_num(lift):>5s}")
    return "\n".join(lines)
