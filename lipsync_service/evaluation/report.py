"""The scores as a text table, with the target ranges beside them."""

from __future__ import annotations

import math

#: Target ranges, [low, high] (None: unbounded), written into scores.json and printed beside the measures.
TARGETS: dict[str, list[float | None]] = {
    "lip_sharpness": [0.7, 1.3],
    "rest_sharpness": [0.9, None],
    "sync_r_lag0": [0.35, None],
    "sync_best_lag": [-1, 1],
    # Per clip, from the viseme goals (the average goal for the bilabial contrast is 0.75).
    "bilabial_contrast": [0.65, None],
    "closure_rate": [0.65, None],
    "rounding_contrast": [0.70, None],
    "jaw_coupling": [0.5, None],
}
ROW_NAMES = {"model_output": "lip-synced output", "baseline": "baseline (unchanged video)",
             "reference": "reference (real footage, own speech)"}
# The viseme columns: scores.json key, header, width.
VISEME_COLUMNS = [("bilabial_contrast", "p/b/m", 7), ("closure_rate", "closed", 7),
                  ("labiodental_contrast", "f/v", 7), ("rounding_contrast", "round", 7), ("jaw_coupling", "jaw r", 7)]



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
            # No target: the chin and jaw line move with the mouth on purpose (docs/behaviour.md#jaw).
            ("rest of lower face PSNR (the jaw moves with the mouth)", fid["rest_psnr_db"], " dB", None),
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
        for key, c in closures.items():
            at, anywhere = c["closed_at_dips"], c["closed_in_speech"]
            lift = at / anywhere if at is not None and anywhere else None
            lines.append(f"  {ROW_NAMES[key]:38s} {c['dips']:5d} {_num(at):>8s} {_num(anywhere):>8s} {_num(lift):>5s}")
    if scores.get("visemes"):
        lines.extend(_viseme_lines(scores, targets))
    return "\n".join(lines)


def _phones_text(name: str, summary: dict | None) -> str:
    if summary is None:
        return f"  {name}: not aligned"
    how = "aligned to the transcript" if summary["source"] == "transcript" else "recognised, then aligned"
    facts = [how, f"{summary['words']} words, {summary['phones']} phones"]
    if summary["words_fit"] is not None:
        facts.append(f"{summary['words_fit']:.0%} of words fit")
    if summary["posterior"] is not None:
        facts.append(f"posterior {summary['posterior']:.2f}")
    if summary["left_out"]:
        facts.append(f"{len(summary['left_out'])} words not in the dictionary left out")
    text = f"  {name}: " + ", ".join(facts)
    return text + (f" -- {summary['problem']}" if summary["problem"] else "")


def _viseme_lines(scores: dict, targets: dict) -> list[str]:
    """The viseme section: how each alignment went, the measures per row, the targets, what was not measured."""
    lines = ["visemes: mouth shapes at the speech's phones (AUC: 0.5 chance, 1 perfect; opening and lower-lip "
             "drop: smallest within +-1 frame)"]
    phones = scores.get("phones", {})
    for key, name in (("speech", "speech"), ("reference_speech", "own speech of the video")):
        if key in phones:
            lines.append(_phones_text(name, phones[key]))
    header = " ".join(f"{title:>{width}s}" for _, title, width in VISEME_COLUMNS)
    lines.append(f"  {'':38s} {header}")
    for row, v in scores["visemes"].items():
        cells = " ".join(f"{_num(v[key]):>{width}s}" for key, _, width in VISEME_COLUMNS)
        lines.append(f"  {ROW_NAMES[row]:38s} {cells}")
    out = scores["visemes"].get("model_output")
    if out is not None:
        target_cells: list[str] = []
        verdicts: list[str] = []
        for key, _, width in VISEME_COLUMNS:
            low, high = targets.get(key, [None, None])
            target_cells.append(f"{'-' if low is None and high is None else _target_text(low, high):>{width}s}")
            if low is not None or high is not None:
                verdicts.append(f"{key.split('_')[0]} {_within(out[key], low, high)}")
        lines.append(f"  {'target (output)':38s} {' '.join(target_cells)}  [{', '.join(verdicts)}]")
    missing = [(ROW_NAMES[row], v["not_measured"]) for row, v in scores["visemes"].items() if v["not_measured"]]
    for name, reasons in missing:
        if len(set(reasons.values())) == 1 and len(reasons) == len(VISEME_COLUMNS):
            lines.append(f"  not measured, {name}: {next(iter(reasons.values()))}")
        else:
            for measure, why in reasons.items():
                lines.append(f"  not measured, {name}, {measure.replace('_', ' ')}: {why}")
    return lines
