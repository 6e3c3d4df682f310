"""Phone labels of the training speech for the viseme heads: which phone is heard at each video frame (or each
mel window of speech-only audio), from pocketsphinx alignments (lipsync_service.evaluation.phones).

Where the words come from:

- GRID clips (`lipnet_grid_*`): the sentence their file name spells (`grid_transcript`);
- speech-only files: their line in `transcripts.txt` (`name|text`);
- every other clip: pocketsphinx's own recognition, kept only when `align` reports no problem (English, words
  fitting the audio).

Only phones of words that fit the audio are kept (`FIT_NATS_PER_FRAME`, as the eval's transcript check); other
frames, fillers and the time outside the alignment are unknown (-1). Silence between fitting words is kept (the
lips are not making a p/b/m, f/v or rounded sound there).

A frame's label is the phone at its centre, as the eval scores it. The window the model hears for video frame i
starts at mel frame floor(i * 80 / fps); for speech-only audio every mel frame k starts a window, labelled with
the phone LABEL_DELAY_S after the window's start (half a 25 fps frame plus half a mel hop: where a video frame's
centre falls in its window on average).

Written to one npz (`write_labels`), outside the repository: `lipsync-service train phones` makes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync_service.evaluation.phones import DIGIT_WORDS

#: ARPAbet phones of the CMU dictionary and silence; a label is an index into this tuple (-1: unknown).
PHONE_SET = ("SIL", "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH",
             "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W",
             "Y", "Z", "ZH")
PHONE_INDEX = {p: i for i, p in enumerate(PHONE_SET)}
UNKNOWN = -1
#: The viseme heads, in served column order, and the phones that make each one positive.
VISEME_HEADS = ("closure", "tuck", "round")
VISEME_PHONES = {"closure": ("P", "B", "M"), "tuck": ("F", "V"), "round": ("UW", "UH", "OW", "W", "OY")}
#: Per head, the negatives a viewer must tell apart from its positives (reported as a separate AUC): for a closure
#: the tongue-tip consonants, as loud as p/b/m, with the lips apart (the eval's bilabial contrast).
HARD_NEGATIVES = {"closure": ("T", "D", "N", "S", "Z", "L", "TH", "DH"), "tuck": (), "round": ()}
#: Mel frames per second of the front end (core/mel.py: 16 kHz, hop 200).
MEL_RATE = 80
#: Where a window's label is read, after its first mel frame (see the module docstring).
LABEL_DELAY_S = 0.5 / 25 + 0.5 / MEL_RATE
SPEECH_SUFFIXES = (".opus", ".wav", ".flac", ".mp3", ".ogg")
#: Loudness speech-only files are brought to (95th percentile of 10 ms levels, dBFS; the clips' speech: about -15).
TARGET_DBFS = -15.0

# GRID's grammar: command colour preposition letter digit adverb, one letter each in the file name.
_GRID_WORDS: list[dict[str, str] | None] = [
    dict(b="bin", l="lay", p="place", s="set"), dict(b="blue", g="green", r="red", w="white"),
    dict(a="at", b="by", i="in", w="with"), None,
    {**{str(d): w for d, w in enumerate(DIGIT_WORDS)}, "z": "zero"},
    dict(a="again", n="now", p="please", s="soon")]


def grid_transcript(name: str) -> str:
    """The sentence a GRID clip's name spells: "lipnet_grid_bbaf2n" -> "bin blue at f two now"."""
    code = Path(name).stem.split("_")[-1]
    if len(code) != len(_GRID_WORDS):
        raise ValueError(f"{name!r} does not end in a six-letter GRID code")
    return " ".join(c if table is None else table[c] for c, table in zip(code, _GRID_WORDS))


def is_grid(name: str) -> bool:
    """Whether a clip is a GRID sentence (its name spells its words)."""
    return Path(name).stem.startswith("lipnet_grid_")


def phone_ids(alignment, times: np.ndarray, fit_floor: float | None = None) -> np.ndarray:
    """The phone heard at each time (seconds) as an index into PHONE_SET; UNKNOWN where it cannot be trusted.

    Args:
        alignment: a usable lipsync_service.evaluation.phones.PhoneAlignment.
        times: float [N] seconds from the start of the speech.
        fit_floor: words fitting the audio worse than this (nats per 10 ms frame) are unknown (default: the
            eval's FIT_NATS_PER_FRAME below 0).

    Returns:
        int16 [N].
    """
    from lipsync_service.evaluation.phones import FIT_NATS_PER_FRAME

    floor = -FIT_NATS_PER_FRAME if fit_floor is None else fit_floor
    times = np.asarray(times, np.float64)
    out = np.full(len(times), UNKNOWN, np.int16)
    bad_words = [(w.start, w.end) for w in alignment.words if w.fit < floor]
    for phone in alignment.phones:
        if phone.name == "SIL":
            index = PHONE_INDEX["SIL"]
        elif phone.name in PHONE_INDEX:
            index = PHONE_INDEX[phone.name]
        else:  # a filler (+NSN+, +BREATH+ ...)
            continue
        inside = (times >= phone.start) & (times < phone.end)
        out[inside] = index
    for start, end in bad_words:
        out[(times >= start) & (times < end)] = UNKNOWN
    return out


def viseme_targets(ids: np.ndarray, heads: Sequence[str] = VISEME_HEADS,
                   phones: dict[str, Sequence[str]] | None = None) -> np.ndarray:
    """Per frame, 1 / 0 for each viseme head (NaN where the phone is unknown): float32 [N, len(heads)]."""
    phones = phones or VISEME_PHONES
    ids = np.asarray(ids)
    out = np.full((len(ids), len(heads)), np.nan, np.float32)
    known = ids >= 0
    for c, head in enumerate(heads):
        positive = np.isin(ids, [PHONE_INDEX[p] for p in phones[head]])
        out[known, c] = positive[known]
    return out


def frame_times(frames: int, fps: Fraction | float) -> np.ndarray:
    """The centre of each video frame, in seconds."""
    return (np.arange(frames) + 0.5) / float(fps)


def window_times(mel_frames: int) -> np.ndarray:
    """Where each speech-only window's label is read: LABEL_DELAY_S after its first mel frame."""
    return np.arange(mel_frames) / MEL_RATE + LABEL_DELAY_S


@dataclass
class Labelled:
    """The phones of one piece of training speech.

    Attributes:
        name: clip or file name.
        ids: int16 [N] phone per video frame (clips) or per window start (speech-only), UNKNOWN where untrusted.
        summary: what the alignment said (source, words, words fit, problem), for the report.
        mel: float16 [80, M] log-mel of speech-only audio (None for clips: the cache has theirs).
        language: "en", "de" or "fr" (speech-only: from the file name); "" for clips.
    """

    name: str
    ids: np.ndarray
    summary: dict
    mel: np.ndarray | None = None
    language: str = ""


def label_speech(name: str, speech: np.ndarray, times: np.ndarray, transcript: str | None) -> Labelled:
    """Align one speech track and read its phones at `times`; all UNKNOWN when the alignment is not usable."""
    from lipsync_service.evaluation.phones import align

    alignment = align(speech, transcript)
    summary = alignment.summary()
    usable = alignment.problem is None
    ids = phone_ids(alignment, times) if usable else np.full(len(times), UNKNOWN, np.int16)
    summary["known_share"] = float(np.mean(ids >= 0)) if len(ids) else 0.0
    return Labelled(name, ids, summary)


def read_transcripts(path: Path) -> dict[str, str]:
    """`name|text` lines of a transcripts file; hyphenated words are split ("forty-two" is two dictionary words)."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        name, sep, text = line.partition("|")
        if sep and name.strip():
            out[name.strip()] = text.strip().replace("-", " ")
    return out


def level_normalised(speech: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Speech scaled so the 95th percentile of its 10 ms levels is `target_dbfs` (peaks kept under full scale).

    Some speech-only recordings are 40 dB quieter than the clips (FLEURS peaks at -45 dBFS); the level jitter of
    training covers +-12.5 dB, not that.
    """
    x = np.asarray(speech, np.float32)
    n = len(x) // 160
    if n == 0:
        return x
    frames = x[: n * 160].astype(np.float64).reshape(n, 160)
    level = float(np.percentile(10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12), 95))
    gain = 10 ** ((target_dbfs - level) / 20)
    peak = float(np.abs(x).max())
    if peak > 0:
        gain = min(gain, 0.99 / peak)
    return (x * gain).astype(np.float32)


def label_clips(cache: Path, done: Sequence[str] = (), log: Callable[[str], None] = print) -> list[Labelled]:
    """Phones of every clip of a prepared cache (both splits) not in `done`, per video frame."""
    from lipsync_models.training.data import load_index
    from lipsync_service.evaluation.speech import load_speech

    out = []
    for entry in load_index(cache)["clips"]:
        name = entry["name"]
        if name in done:
            continue
        speech = load_speech(Path(entry.get("audio") or entry["video"]))
        frames = int(entry["frames"])
        transcript = grid_transcript(name) if is_grid(name) else None
        labelled = label_speech(name, speech, frame_times(frames, Fraction(entry["fps"])), transcript)
        out.append(labelled)
        log(_line(labelled))
    return out


def label_speech_folder(folder: Path, transcripts: dict[str, str], done: Sequence[str] = (),
                        log: Callable[[str], None] = print) -> list[Labelled]:
    """Phones of every speech-only file of a folder that has a transcript and is not in `done`, per mel window
    start, with its mel (level_normalised first).

    Files of other languages than English are not aligned (pocketsphinx's models are US English): they are kept
    with every frame UNKNOWN, to check the heads on them.
    """
    from lipsync_service.core.mel import melspectrogram
    from lipsync_service.evaluation.speech import load_speech

    out = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix in SPEECH_SUFFIXES):
        name = path.stem
        if name not in transcripts or name in done:
            continue
        speech = level_normalised(load_speech(path))
        mel = melspectrogram(speech).astype(np.float16)
        language = name.split("_", 1)[0]
        times = window_times(mel.shape[1])
        if language == "en":
            labelled = label_speech(name, speech, times, transcripts[name])
        else:
            labelled = Labelled(name, np.full(len(times), UNKNOWN, np.int16),
                                {"source": "none", "problem": f"not aligned: language {language!r}"})
        labelled.mel, labelled.language = mel, language
        out.append(labelled)
        log(_line(labelled))
    return out


def _line(item: Labelled) -> str:
    s = item.summary
    fit = "-" if s.get("words_fit") is None else f"{s['words_fit']:.2f}"
    return (f"phones {item.name}: {s.get('source')}, {s.get('words', 0)} words, fit {fit}, "
            f"{100 * float(np.mean(item.ids >= 0)):.0f}% of frames labelled"
            + (f"; {s['problem']}" if s.get("problem") else ""))


def write_labels(path: Path, clips: dict[str, Labelled], speech: dict[str, Labelled]) -> None:
    """One npz: clip/<name> ids, speech/<name>/ids and /mel, and a JSON summary of every alignment."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, dict] = {"clips": {}, "speech": {}}
    for name, item in clips.items():
        arrays[f"clip/{name}"] = item.ids
        meta["clips"][name] = item.summary
    for name, item in speech.items():
        if item.mel is None:
            raise ValueError(f"speech-only {name} has no mel")
        arrays[f"speech/{name}/ids"] = item.ids
        arrays[f"speech/{name}/mel"] = item.mel
        meta["speech"][name] = {**item.summary, "language": item.language}
    arrays["meta"] = np.frombuffer(json.dumps({"phone_set": PHONE_SET, **meta}).encode(), np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def read_labels(path: Path) -> tuple[dict[str, Labelled], dict[str, Labelled]]:
    """What write_labels wrote: (clip name -> Labelled, speech-only name -> Labelled with its mel).

    Raises:
        ValueError: the file was written with another phone set.
    """
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        if tuple(meta["phone_set"]) != PHONE_SET:
            raise ValueError(f"{path} was written with another phone set: run `train phones` again")
        clips = {name: Labelled(name, z[f"clip/{name}"], summary) for name, summary in meta["clips"].items()}
        speech = {name: Labelled(name, z[f"speech/{name}/ids"], summary, z[f"speech/{name}/mel"],
                                 summary.get("language", "")) for name, summary in meta["speech"].items()}
    return clips, speech


def label_all(out: Path, cache: Path | None = None, speech_dir: Path | None = None,
              transcripts: Path | None = None, log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Label the clips of a cache and the speech-only files of a folder into `out` (resumable: what `out` already
    holds is kept and not aligned again; the file is written after each part).

    Args:
        out: the labels npz.
        cache: a prepared cache (`train prepare`), or None.
        speech_dir: a folder of speech-only files, or None.
        transcripts: their `name|text` file (default: transcripts.txt in speech_dir).

    Returns:
        (clips, speech) as read_labels gives them.
    """
    clips: dict[str, Labelled] = {}
    speech: dict[str, Labelled] = {}
    if Path(out).is_file():
        clips, speech = read_labels(out)
    if cache is not None:
        clips.update({item.name: item for item in label_clips(cache, list(clips), log)})
        write_labels(out, clips, speech)
    if speech_dir is not None:
        texts = read_transcripts(transcripts or Path(speech_dir) / "transcripts.txt")
        speech.update({item.name: item for item in label_speech_folder(speech_dir, texts, list(speech), log)})
        write_labels(out, clips, speech)
    return clips, speech


def speech_windows(mel: np.ndarray, steps: int = 16) -> np.ndarray:
    """Every full window of a speech-only mel [80, M]: float32 [M - steps + 1, 80, steps]."""
    mel = np.asarray(mel, np.float32)
    count = mel.shape[1] - steps + 1
    if count <= 0:
        return np.empty((0, mel.shape[0], steps), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(mel, steps, axis=1)  # [80, count, steps]
    return np.ascontiguousarray(view.transpose(1, 0, 2))


def phone_names(ids: np.ndarray) -> list[str | None]:
    """Phone names of ids (None where unknown)."""
    return [PHONE_SET[i] if i >= 0 else None for i in np.asarray(ids).tolist()]


def add_arguments(ap) -> None:
    """The arguments of `lipsync-service train phones` (argparse.ArgumentParser)."""
    ap.add_argument("out", type=Path, help="labels file to write (npz; resumable: what it holds is kept)")
    ap.add_argument("--cache", type=Path, default=None, help="a prepared cache (`train prepare`): label its clips")
    ap.add_argument("--speech", type=Path, default=None,
                    help="a folder of speech-only files with a transcripts.txt (name|text per line): label them")
    ap.add_argument("--transcripts", type=Path, default=None, help="another transcripts file for --speech")


def run(args) -> Path:
    """Label what the arguments name and print a summary; returns the labels file."""
    if args.cache is None and args.speech is None:
        raise ValueError("nothing to label: give --cache, --speech or both")
    clips, speech = label_all(args.out, args.cache, args.speech, args.transcripts)
    for what, items, rate in (("clips", clips, 25.0), ("speech-only", speech, float(MEL_RATE))):
        usable = [i for i in items.values() if i.summary.get("problem") is None]
        seconds = sum(float(np.sum(i.ids >= 0)) for i in usable) / rate
        print(f"{what}: {len(usable)} of {len(items)} aligned, about {seconds:.0f} s of labelled frames")
    return Path(args.out)
