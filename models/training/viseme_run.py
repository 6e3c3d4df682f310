"""Train the speech -> lip shape + visemes ensemble and export the 5-column `lip_shape` ONNX.

`lipsync-service train visemes CACHE SHAPE_LABELS PHONES OUT_DIR` (shape labels from shape_labels.py in the eval
venv, phones from `lipsync-service train phones`). Speech-only files whose name starts with a --held-out prefix
(default: FLEURS English and the JFK excerpt) are never trained on; German and French files only show how the
viseme heads behave on other languages. Writes viseme_net.pt, model.onnx and report.json into OUT_DIR and prints
each clip's audio-video offset, the held-out r of the two z-scores per validation clip (as `train shape` does), the
frame-level AUC of each viseme head on the held-out speech, and the heads' mean probabilities per language.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync_models.training.phone_labels import HARD_NEGATIVES, PHONE_INDEX, VISEME_HEADS, VISEME_PHONES

HELD_OUT_PREFIXES = ("en_fleurs", "en_jfk")
# Phone groups whose mean probabilities the report gives per head (what the renderer can expect).
REPORT_GROUPS = {"p b m": ("P", "B", "M"), "t d n": ("T", "D", "N"), "f v": ("F", "V"), "uw ow": ("UW", "OW"),
                 "iy ih eh": ("IY", "IH", "EH"), "silence": ("SIL",)}


@dataclass
class Part:
    """The windows of one clip or speech-only file and their targets.

    Attributes:
        name: clip or file name.
        kind: "clip" or "speech".
        group: identity (clips) or language (speech-only files).
        x: float32 [N, 80, 16].
        shape: float32 [N, 2] z-scored opening and width (NaN: none).
        ids: int16 [N] phone per window (phone_labels.UNKNOWN: none).
        offset: the clip's audio-video offset (0 for speech).
    """

    name: str
    kind: str
    group: str
    x: np.ndarray
    shape: np.ndarray
    ids: np.ndarray
    offset: int = 0


def gather_clips(cache: Path, labels: dict[str, np.ndarray], phones: dict, split: str, max_offset: int) -> list[Part]:
    """Every frame's window of each clip of a split, with its shape targets (shifted by the clip's offset, as
    shape_run.gather_shape does) and its phone (heard at that frame: no shift, the window is the same audio)."""
    from lipsync_models.training import opening as op
    from lipsync_models.training.data import load_clips, load_index
    from lipsync_models.training.opening_run import clip_envelope
    from lipsync_models.training.phone_labels import UNKNOWN
    from lipsync_models.training.shape import zscore_shape

    entries = {e["name"]: e for e in load_index(cache)["clips"]}
    out = []
    for clip in load_clips(cache, split):
        n = len(clip.valid)
        shape = np.full((n, 2), np.nan, np.float32)
        offset = 0
        if clip.name in labels:
            z = zscore_shape(labels[clip.name])
            if len(z) != n:
                raise ValueError(f"labels of {clip.name} have {len(z)} frames, the cache {n}: run shape_labels.py "
                                 "on this cache again")
            finite = np.isfinite(z).all(axis=1)
            if max_offset:
                offset = op.clip_offset(z[:, 0], clip_envelope(entries[clip.name], n), max_offset)
            frames, label_frames = op.aligned_frames(finite & clip.valid, offset)
            shape[frames] = z[label_frames]
        ids = np.full(n, UNKNOWN, np.int16)
        if clip.name in phones:
            ids = np.asarray(phones[clip.name].ids, np.int16)
            if len(ids) != n:
                raise ValueError(f"phones of {clip.name} have {len(ids)} frames, the cache {n}: run `train phones` "
                                 "on this cache again")
        out.append(Part(clip.name, "clip", clip.identity, op.mel_windows(clip), shape, ids, offset))
    return out


def gather_speech(speech: dict) -> list[Part]:
    """Every full window of each speech-only file, with its phone (no shape targets)."""
    from lipsync_models.training.phone_labels import speech_windows

    out = []
    for name, item in sorted(speech.items()):
        x = speech_windows(item.mel)
        out.append(Part(name, "speech", item.language, x, np.full((len(x), 2), np.nan, np.float32),
                        np.asarray(item.ids[: len(x)], np.int16)))
    return out


def training_set(parts: list[Part]):
    """The TrainingSet of some parts (None when there are none)."""
    from lipsync_models.training.phone_labels import viseme_targets
    from lipsync_models.training.viseme import TrainingSet

    if not parts:
        return None
    return TrainingSet(np.concatenate([p.x for p in parts]), np.concatenate([p.shape for p in parts]),
                       viseme_targets(np.concatenate([p.ids for p in parts])))


def viseme_report(name: str, pred: np.ndarray, ids: np.ndarray) -> dict:
    """Frame-level AUC of each viseme head against the phones (where known), mean probability per phone group, the
    share of frames each head calls (p > 0.5); one printed line."""
    from lipsync_service.evaluation.visemes import auc

    known = ids >= 0
    row: dict = {"frames": int(known.sum())}
    for c, head in enumerate(VISEME_HEADS):
        p = pred[:, 2 + c]
        positive = np.isin(ids, [PHONE_INDEX[x] for x in VISEME_PHONES[head]])
        pos, neg = p[known & positive], p[known & ~positive]
        row[f"auc_{head}"] = auc(pos, neg) if len(pos) and len(neg) else None
        hard = p[known & np.isin(ids, [PHONE_INDEX[x] for x in HARD_NEGATIVES[head]])]
        # Against the hard negatives only (for a closure: p/b/m against t/d/n/s/z/l/th/dh, the eval's contrast).
        row[f"auc_{head}_hard"] = auc(pos, hard) if len(pos) and len(hard) else None
        row[f"positives_{head}"] = int(len(pos))
        row[f"mean_{head}"] = float(p.mean()) if len(p) else None
        row[f"called_{head}"] = float(np.mean(p > 0.5)) if len(p) else None
        row[f"rate_{head}"] = float(np.mean(positive[known])) if known.any() else None
        for group, phones in REPORT_GROUPS.items():
            inside = np.isin(ids, [PHONE_INDEX[x] for x in phones])
            row[f"{head} at {group}"] = float(p[inside].mean()) if inside.any() else None
    aucs = " ".join(f"{h} {row[f'auc_{h}']:.3f}" if row[f"auc_{h}"] is not None else f"{h} -" for h in VISEME_HEADS)
    means = " ".join(f"{h} {row[f'mean_{h}']:.3f}" for h in VISEME_HEADS if row[f"mean_{h}"] is not None)
    hard = row["auc_closure_hard"]
    print(f"visemes {name}: {row['frames']} labelled frames; AUC {aucs}; closure against t/d/n... "
          f"{'-' if hard is None else f'{hard:.3f}'}; mean p {means}")
    return row


def measure_file(net, recipe, path: Path, fps: int = 25) -> dict:
    """The viseme report of one speech file as the service hears it (its own level, one window per 25 fps frame),
    against the phones of pocketsphinx's own recognition (frames of words that do not fit left out)."""
    from lipsync_models.training import viseme as vm
    from lipsync_models.training.phone_labels import frame_times, label_speech
    from lipsync_service.core.mel import melspectrogram, window_start
    from lipsync_service.evaluation.speech import load_speech

    speech = load_speech(path)
    mel = melspectrogram(speech)
    frames = int(len(speech) / 16000 * fps)
    starts = [min(window_start(i, fps), mel.shape[1] - 16) for i in range(frames)]
    x = np.stack([mel[:, s:s + 16] for s in starts]).astype(np.float32)
    labelled = label_speech(path.stem, speech, frame_times(frames, fps), None)
    row = viseme_report(f"measured {path.name} ({labelled.summary.get('words', 0)} recognised words)",
                        vm.predict(net, x, recipe.pos_weight), labelled.ids)
    row["alignment"] = labelled.summary
    return row


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The command's arguments (shared by `lipsync-service train visemes` and `python -m`)."""
    from lipsync_models.training.viseme import ARCHITECTURES, Recipe

    d = Recipe()
    ap.add_argument("cache", type=Path, help="the prepared cache (`train prepare`)")
    ap.add_argument("labels", type=Path, help="lip shapes of the cache's frames (shape_labels.py)")
    ap.add_argument("phones", type=Path, help="phone labels of the cache's clips and speech-only files "
                    "(`train phones`)")
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--held-out", action="append", default=None,
                    help="speech-only name prefix never trained on, reported as held out (repeatable; default "
                    f"{', '.join(HELD_OUT_PREFIXES)})")
    ap.add_argument("--max-offset", type=int, default=2, help="audio-video offset searched per clip, frames")
    ap.add_argument("--arch", choices=ARCHITECTURES, default=d.arch, help="member network")
    ap.add_argument("--members", type=int, default=d.members)
    ap.add_argument("--steps", type=int, default=d.steps, help="Adam steps per member")
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--channels", type=int, default=d.channels, help="conv channels (--arch conv)")
    ap.add_argument("--dropout", type=float, default=d.dropout)
    ap.add_argument("--pos-weight", type=float, nargs=3, default=list(d.pos_weight),
                    metavar=("CLOSURE", "TUCK", "ROUND"), help="positive weight of each viseme head's loss")
    ap.add_argument("--viseme-weight", type=float, default=d.viseme_weight, help="viseme loss weight")
    ap.add_argument("--no-speech", action="store_true", help="train the viseme heads on the clips' phones only")
    ap.add_argument("--opening-gain", type=float, default=3.0, help="served gain on the predicted opening")
    ap.add_argument("--width-gain", type=float, default=2.5, help="served gain on the predicted width")
    ap.add_argument("--measure", type=Path, action="append", default=[],
                    help="speech file only measured (the viseme AUC against pocketsphinx's own recognition, as the "
                    "service would hear it at 25 fps), never trained on (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp32", action="store_true", help="store float32 weights (default: float16, cast at load)")


def run(args: argparse.Namespace) -> Path:
    """Train, report, export; returns the ONNX path."""
    import torch

    from lipsync_models.training import viseme as vm
    from lipsync_models.training.phone_labels import read_labels
    from lipsync_models.training.shape import load_shape_labels, pearson

    # One thread: these small networks gain little from a second one, and lose much when the cores are shared.
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    held = tuple(args.held_out or HELD_OUT_PREFIXES)
    labels = load_shape_labels(args.labels)
    phone_clips, phone_speech = read_labels(args.phones)
    train = gather_clips(args.cache, labels, phone_clips, "train", args.max_offset)
    if not train:
        raise ValueError(f"no training clips in {args.cache}")
    val = gather_clips(args.cache, labels, phone_clips, "val", 0)
    speech = gather_speech(phone_speech)
    speech_train = [p for p in speech if p.group == "en" and not p.name.startswith(held) and not args.no_speech]
    speech_held = [p for p in speech if p.group == "en" and p.name.startswith(held)]
    for part in train:
        print(f"offset {part.name} {part.offset:+d}")
    clips_set, speech_set = training_set(train), training_set(speech_train)
    print(f"training windows: {len(clips_set.x)} of clips ({int(np.isfinite(clips_set.visemes[:, 0]).sum())} with "
          f"a phone), {0 if speech_set is None else len(speech_set.x)} of speech-only audio")
    recipe = vm.Recipe(members=args.members, arch=args.arch, hidden=args.hidden, dropout=args.dropout,
                       channels=args.channels, steps=args.steps, pos_weight=tuple(args.pos_weight),
                       viseme_weight=args.viseme_weight, seed=args.seed)
    started = time.perf_counter()
    net = vm.train_viseme(clips_set, speech_set, recipe)
    seconds = time.perf_counter() - started
    print(f"trained {recipe.members} x {recipe.steps} steps in {seconds:.0f} s")
    vm.save_viseme(net, args.out / "viseme_net.pt", recipe)
    report: dict = {"train_seconds": seconds, "recipe": vars(args) | {"out": str(args.out), "cache": str(args.cache),
                                                                     "labels": str(args.labels),
                                                                     "phones": str(args.phones)},
                    "clips": {}, "speech": {}}
    fit = vm.predict(net, clips_set.x, recipe.pos_weight)
    ok = np.isfinite(clips_set.shape).all(axis=1)
    print(f"train r opening {pearson(fit[ok, 0], clips_set.shape[ok, 0]):.3f} "
          f"width {pearson(fit[ok, 1], clips_set.shape[ok, 1]):.3f}")
    for part in val:
        pred = vm.predict(net, part.x, recipe.pos_weight)
        ok = np.isfinite(part.shape).all(axis=1)
        row = {"r_opening": pearson(pred[ok, 0], part.shape[ok, 0]), "r_width": pearson(pred[ok, 1], part.shape[ok, 1])}
        print(f"held-out {part.name}: r opening {row['r_opening']:.3f} width {row['r_width']:.3f}")
        if (part.ids >= 0).any():
            row.update(viseme_report(part.name, pred, part.ids))
        report["clips"][part.name] = row
    pooled = {}
    for language in sorted({p.group for p in speech}):
        chosen = [p for p in speech if p.group == language and (language != "en" or p.name.startswith(held))]
        if not chosen:
            continue
        pred = np.concatenate([vm.predict(net, p.x, recipe.pos_weight) for p in chosen])
        ids = np.concatenate([p.ids for p in chosen])
        key = f"held-out {language}" if language == "en" else language
        pooled[key] = viseme_report(f"{key} ({len(chosen)} files)", pred, ids)
        pooled[key]["z_sd"] = [float(pred[:, c].std()) for c in range(2)]
    report["speech"] = pooled
    for path in args.measure:
        report["speech"][f"measured {path.name}"] = measure_file(net, recipe, path)
    real = np.concatenate([p.x for p in (val or train)])[:4096, None]
    gains = np.array([args.opening_gain, args.width_gain], np.float32)
    out = vm.export_viseme(net, args.out / "model.onnx", gains, recipe.pos_weight, recipe,
                           fp16_weights=not args.fp32, check_mel=real)
    from lipsync_models.training.shape import served_error

    error = served_error(vm.build_served(net, gains, recipe.pos_weight), out, real)
    report.update(onnx_bytes=out.stat().st_size, onnx_error=error, parameters=vm.count_parameters(net),
                  speech_train_files=[p.name for p in speech_train],
                  speech_held_out_files=[p.name for p in speech_held])
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"onnx {out.stat().st_size / 1e6:.2f} MB, {vm.count_parameters(net) / 1e6:.2f} M params, "
          f"max |onnx - torch| {error:.1e}")
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
