"""Dataset builder: talking-head videos -> aligned face crops + speech mel, cached per clip, split by identity.

`prepare` walks folders of videos (speech in the file, or in a WAV of the same name beside it), finds and
tracks the face with the service's own detector, cuts the crop the service will cut at serving time,
computes the service's log-mel front end, and writes one compressed npz per clip plus index.json. A clip
already in the index is skipped, so an interrupted run resumes where it stopped. The split is by identity:
every clip of a validation identity goes to "val", never single frames.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lipsync_models.training.data import INDEX_FILE

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".avi", ".webm")
DEFAULT_CACHE = Path.home() / ".cache" / "lipsync-data"


@dataclass(frozen=True)
class ClipSource:
    """A video to prepare.

    Attributes:
        video: the video file.
        audio: where its speech is (the video itself or a WAV beside it).
        identity: person label used for the split.
    """

    video: Path
    audio: Path
    identity: str


def read_identities(folder: Path) -> dict[str, str]:
    """File name -> identity label from a NOTICE.md table with an "identity" column, if the folder has one."""
    notice = Path(folder) / "NOTICE.md"
    if not notice.exists():
        return {}
    labels: dict[str, str] = {}
    columns: list[str] | None = None
    for line in notice.read_text(errors="replace").splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = [c.lower() for c in cells]
            continue
        if all(set(c) <= set("-: ") for c in cells):  # the header's separator row
            continue
        if "identity" in columns and "file" in columns and len(cells) == len(columns):
            name, ident = cells[columns.index("file")], cells[columns.index("identity")]
            if re.fullmatch(r"[\w.-]+", name) and ident not in ("", "–", "-"):
                labels[name] = ident
    return labels


def find_sources(folders: Iterable[Path], exclude: Callable[[str], bool] | None = None) -> list[ClipSource]:
    """Videos in the folders (not recursive), each with its speech source and identity.

    A video whose container has no audio track uses a WAV of the same stem; one with neither is skipped
    with a warning. Identity: the folder's NOTICE.md label, else the file stem.
    """
    import av

    sources = []
    for folder in folders:
        folder = Path(folder)
        labels = read_identities(folder)
        for video in sorted(folder.iterdir()):
            if video.suffix.lower() not in VIDEO_SUFFIXES or (exclude is not None and exclude(video.name)):
                continue
            wav = video.with_suffix(".wav")
            if not wav.exists():
                wav = video.with_name(video.stem + "_audio.wav")
            try:
                with av.open(str(video)) as container:
                    has_audio = bool(container.streams.audio)
            except av.FFmpegError as exc:
                log.warning("skipping %s: unreadable (%s)", video, exc)
                continue
            audio = wav if wav.exists() else (video if has_audio else None)
            if audio is None:
                log.warning("skipping %s: no audio track and no WAV beside it", video)
                continue
            sources.append(ClipSource(video, audio, labels.get(video.name, video.stem)))
    return sources


def load_speech(path: Path) -> np.ndarray:
    """The first audio track of a file as 16 kHz mono float32, decoded the way serving decodes a request's
    speech (channels averaged, not FFmpeg's down-mix: see `lipsync_service.media.audio.load_speech_file`)."""
    from lipsync_service.media.audio import load_speech_file

    return load_speech_file(str(path))


def _cache_name(source: ClipSource) -> str:
    return re.sub(r"[^\w.-]", "_", source.video.stem) + ".npz"


def _read_index(cache: Path) -> dict:
    path = cache / INDEX_FILE
    return json.loads(path.read_text()) if path.exists() else {"clips": []}


def _write_index(cache: Path, index: dict) -> None:
    tmp = cache / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, cache / INDEX_FILE)


def write_clip(cache: Path, name: str, identity: str, split: str, faces: np.ndarray, valid: np.ndarray,
               mel: np.ndarray, window_starts: np.ndarray, fps: Fraction, extra: dict | None = None) -> None:
    """Store one prepared clip and record it in index.json (replacing an entry of the same name).

    Args:
        cache: the cache folder.
        name: clip name (file stem).
        identity: person label.
        split: "train" or "val".
        faces: uint8 [N, S, S, 3] BGR crops.
        valid: bool [N].
        mel: float [80, M] log-mel of the speech.
        window_starts: int [N] first mel frame of each video frame's window.
        fps: video frame rate.
        extra: more facts for the index (source paths, face rate).
    """
    cache.mkdir(parents=True, exist_ok=True)
    file = re.sub(r"[^\w.-]", "_", name) + ".npz"
    tmp = cache / (file + ".tmp.npz")
    np.savez_compressed(tmp, faces=faces.astype(np.uint8), valid=valid.astype(bool), mel=mel.astype(np.float16),
                        window_starts=window_starts.astype(np.int32))
    os.replace(tmp, cache / file)
    index = _read_index(cache)
    index["clips"] = [c for c in index["clips"] if c["name"] != name]
    index["clips"].append({"name": name, "identity": identity, "split": split, "file": file,
                           "frames": int(len(faces)), "valid_frames": int(valid.sum()),
                           "face_size": int(faces.shape[1]), "fps": str(fps), "complete": True,
                           **(extra or {})})
    _write_index(cache, index)


def choose_split(identities: Iterable[str], val_identities: Iterable[str]) -> dict[str, str]:
    """identity -> "val" for the named validation identities, "train" for the rest.

    Raises:
        ValueError: a validation identity is unknown, or every identity would be validation.
    """
    identities = sorted(set(identities))
    val = set(val_identities)
    unknown = val - set(identities)
    if unknown:
        raise ValueError(f"validation identities not found among the clips: {sorted(unknown)}")
    if identities and val >= set(identities):
        raise ValueError("every identity is in validation; keep at least one for training")
    return {i: ("val" if i in val else "train") for i in identities}


def prepare(folders: Iterable[Path], cache: Path = DEFAULT_CACHE, val_identities: Iterable[str] = (),
            face_size: int = 96, max_frames: int | None = None, exclude: Callable[[str], bool] | None = None,
            progress: Callable[[str], None] | None = None) -> dict:
    """Build (or complete) the training cache from folders of talking-head videos.

    Args:
        folders: folders holding the videos.
        cache: output folder (created).
        val_identities: identities held out for validation.
        face_size: S of the crops.
        max_frames: cut each clip to this many frames (quick runs and tests).
        exclude: file names for which this returns True are skipped.
        progress: called with one line per clip.

    Returns:
        the index (also written to cache/index.json).

    Raises:
        ValueError: no usable video, or a bad validation identity.
    """
    from lipsync_models.training.crop_track import crop_clip
    from lipsync_service.core.mel import melspectrogram, window_start

    cache = Path(cache)
    sources = find_sources(folders, exclude)
    if not sources:
        raise ValueError(f"no video with speech found in {[str(f) for f in folders]}")
    split = choose_split([s.identity for s in sources], val_identities)
    done = {c["name"]: c for c in _read_index(cache)["clips"] if c.get("complete")}
    for source in sources:
        name = source.video.stem
        want = split[source.identity]
        if name in done and done[name]["face_size"] == face_size:
            if done[name]["split"] != want:  # only the split changed: relabel, keep the crops
                index = _read_index(cache)
                for c in index["clips"]:
                    if c["name"] == name:
                        c["split"] = want
                _write_index(cache, index)
            if progress:
                progress(f"{name}: cached")
            continue
        faces, valid, fps = crop_clip(source.video, face_size, max_frames=max_frames)
        speech = load_speech(source.audio)
        mel = melspectrogram(speech)
        starts = np.array([window_start(i, fps) for i in range(len(faces))], np.int64)
        write_clip(cache, name, source.identity, want, faces, valid, mel, starts, fps,
                   {"video": str(source.video), "audio": str(source.audio)})
        if progress:
            progress(f"{name}: {len(faces)} frames, face in {valid.mean():.0%}, {want} ({source.identity})")
    return _read_index(cache)
