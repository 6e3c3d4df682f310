"""Build the held-out footage and speech set from snapshots of public repositories.

Every output file is made from one file of one public repository at a recorded commit. The snapshots are
bare git directories laid out as ``<mirror>/<owner>+<name>/repo`` (what the search tool's ``fetch`` leaves);
blobs are read with ``git show COMMIT:PATH``, so no work tree is needed.

What it writes under ``--out`` (default ``data``):

- ``footage/<name>.mp4``: H.264 (libx264, yuv420p, constant 25 fps, at most 720 px on the long side) with
  the clip's own speech as AAC (48 kHz mono), trimmed to the useful part.
- ``speech/<name>.opus``: speech only, Opus in Ogg, 16 kHz mono, with ``speech/transcripts.txt``
  (``name|text``, one line a file).
- ``licenses/``: the licence file of every source repository, as that commit holds it.
- ``NOTICE.md``: one row per output file: repository, commit, path, licence, what was done to it.

Usage::

    python tools/prepare_data.py --mirror /path/to/mirrors [--out data]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 25
MAX_SIDE = 720
CRF = "21"
CLIP_AUDIO_RATE = 48_000
SPEECH_RATE = 16_000
SPEECH_BITRATE = 24_000


@dataclass(frozen=True)
class Repo:
    """One source repository at one commit.

    Attributes:
        name: ``owner/name`` as GitHub spells it.
        commit: the full commit hash every file is read at.
        license_path: the repository's licence file at that commit.
        license_id: short licence name for the notice (SPDX where one exists).
    """

    name: str
    commit: str
    license_path: str
    license_id: str

    def git_dir(self, mirror: Path) -> Path:
        """The bare git directory of this repository's snapshot.

        Args:
            mirror: folder holding ``<owner>+<name>/repo`` snapshots.

        Returns:
            The path of the git directory.
        """
        return mirror / self.name.replace("/", "+") / "repo"

    def read(self, mirror: Path, path: str) -> bytes:
        """The bytes of one file at this repository's commit.

        Args:
            mirror: folder holding the snapshots.
            path: the file's path inside the repository.

        Returns:
            The file's content.

        Raises:
            SystemExit: the snapshot or the file is missing, or the blob is a Git LFS pointer.
        """
        proc = subprocess.run(["git", f"--git-dir={self.git_dir(mirror)}", "show", f"{self.commit}:{path}"],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"cannot read {self.name}@{self.commit[:12]}:{path}: "
                             f"{proc.stderr.decode(errors='replace').strip()}")
        if proc.stdout.startswith(b"version https://git-lfs"):
            raise SystemExit(f"{self.name}:{path} is a Git LFS pointer, not the file")
        return proc.stdout

    @property
    def license_copy(self) -> str:
        """File name of this repository's licence under ``licenses/``."""
        return f"{self.name.replace('/', '_')}_{Path(self.license_path).name}"


VIDEO_RETALKING = Repo("OpenTalker/video-retalking", "7f44379f0547e542fa1582073c9c5122d8849cb9",
                       "LICENSE", "Apache-2.0")
PC_AVS = Repo("Hangz-nju-cuhk/Talking-Face_PC-AVS", "14736e3a236b1e3b39ff8302ae66a1abc4876a49",
              "LICENSE", "CC-BY-4.0")
WHISPER_CPP_WER = Repo("ggerganov/whisper.cpp", "13750f3a2407ebe8e7f32e39284f04a7edd9f7f3", "LICENSE", "MIT")
WHISPER_CPP = Repo("ggerganov/whisper.cpp", "f0d2bfbfb77e01df6160f64d249bd43e75e11660", "LICENSE", "MIT")
COQUI_TTS = Repo("coqui-ai/TTS", "dbf1a08a0d4e47fdad6172e433eeb34bc6b13b4e", "LICENSE.txt", "MPL-2.0")
TACOTRON2 = Repo("NVIDIA/tacotron2", "185cd24e046cc1304b4f8e564734d2498c6e2e6f", "LICENSE", "BSD-3-Clause")
CUTTLEDOC = Repo("sebastian-software/cuttledoc", "e0c587883f1fdf67d521f8e0b3c216b22d91fda6", "LICENSE", "MIT")


@dataclass(frozen=True)
class Clip:
    """A talking-head clip to trim and re-encode.

    Attributes:
        name: output file stem.
        repo: where the file comes from.
        path: the file's path in the repository.
        start: seconds from the first video frame to keep from.
        duration: seconds to keep; None keeps the rest.
        footage: what the footage itself is and its own terms, for the notice.
    """

    name: str
    repo: Repo
    path: str
    start: float
    duration: float | None
    footage: str


@dataclass(frozen=True)
class Speech:
    """A speech-only recording with its transcript.

    Attributes:
        name: output file stem; its prefix names the language (``en_``, ``de_``, ``fr_``).
        repo: where the audio comes from.
        path: the audio file's path in the repository.
        text: what is said.
        text_source: where the transcript comes from, for the notice.
        corpus: the corpus the recording belongs to and its own terms, for the notice.
    """

    name: str
    repo: Repo
    path: str
    text: str
    text_source: str
    corpus: str


@dataclass
class Notice:
    """Rows of the notice, gathered while the files are written."""

    rows: list[str] = field(default_factory=list)
    repos: dict[str, Repo] = field(default_factory=dict)

    def add(self, out: str, repo: Repo, path: str, done: str, terms: str) -> None:
        """Record one output file.

        Args:
            out: the output path relative to the data folder.
            repo: its source repository.
            path: its path in that repository.
            done: what was done to it.
            terms: the footage's or corpus's own origin and licence.
        """
        self.repos[repo.name + repo.commit] = repo
        self.rows.append(f"| `{out}` | {repo.name} | `{repo.commit}` | `{path}` | {repo.license_id} "
                         f"(`licenses/{repo.license_copy}`); {terms} | {done} |")


CLIPS: tuple[Clip, ...] = (
    Clip("vr_woman_bluebg", VIDEO_RETALKING, "examples/face/4.mp4", 0.0, None,
         "real footage, one woman speaking to camera in a studio; origin not stated by the repository"),
    Clip("vr_woman_glasses_office", VIDEO_RETALKING, "examples/face/5.mp4", 0.0, None,
         "real footage, one woman with glasses in an office; origin not stated by the repository"),
    Clip("vox2_man_turned", PC_AVS, "misc/Audio_Source/00015.mp4", 0.0, None,
         "VoxCeleb2 clip (face crop of a TV interview; VoxCeleb2 is released under CC BY 4.0)"),
)


def _lj_speech(mirror: Path) -> list[Speech]:
    """LJSpeech recordings LJ001-0001..0032 with their transcripts.

    The audio is what coqui-ai/TTS keeps as test data; the text is the original transcript column of the
    LJSpeech metadata as NVIDIA/tacotron2's file lists hold it (coqui's own metadata lists only 8 lines).
    """
    texts: dict[str, str] = {}
    for part in ("train", "val", "test"):
        raw = TACOTRON2.read(mirror, f"filelists/ljs_audio_text_{part}_filelist.txt").decode("utf-8")
        for line in raw.splitlines():
            wav, _, text = line.partition("|")
            texts[Path(wav).stem] = text.strip()
    out = []
    for i in range(1, 33):
        key = f"LJ001-{i:04d}"
        out.append(Speech(f"en_ljspeech_{key}", COQUI_TTS, f"tests/data/ljspeech/wavs/{key}.wav", texts[key],
                          "NVIDIA/tacotron2 filelists/ljs_audio_text_*_filelist.txt",
                          "LJSpeech 1.1 (public domain; LibriVox reading)"))
    return out


def _hifi_tts(mirror: Path) -> list[Speech]:
    """Hi-Fi TTS speaker 6097 (about 5 minutes) from whisper.cpp's word-error-rate test set."""
    base = "wer_testing/6097_5_mins"
    raw = WHISPER_CPP_WER.read(mirror, f"{base}/manifest.json").decode("utf-8")
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        path = f"{base}/{row['audio_filepath']}"
        out.append(Speech(f"en_hifitts6097_{Path(path).stem}", WHISPER_CPP_WER, path,
                          str(row["text_no_preprocessing"]).strip(), f"{base}/manifest.json",
                          "Hi-Fi TTS speaker 6097 (CC BY 4.0; LibriVox reading)"))
    return out


def _fleurs(mirror: Path) -> list[Speech]:
    """FLEURS test-split recordings in English, German and French (10 each) with their transcripts."""
    base = "packages/cuttledoc/fixtures"
    out = []
    for lang in ("en", "de", "fr"):
        for i in range(10):
            stem = f"fleurs-{lang}-{i:03d}"
            text = CUTTLEDOC.read(mirror, f"{base}/{stem}.txt").decode("utf-8").strip()
            out.append(Speech(f"{lang}_fleurs_{i:03d}", CUTTLEDOC, f"{base}/{stem}.ogg", text,
                              f"{base}/{stem}.txt", "FLEURS (Google, CC BY 4.0)"))
    return out


def _jfk() -> list[Speech]:
    """The 11-second excerpt of the 1961 inaugural address that whisper.cpp ships as its sample."""
    return [Speech("en_jfk_inaugural", WHISPER_CPP, "samples/jfk.wav",
                   "And so my fellow Americans, ask not what your country can do for you, "
                   "ask what you can do for your country.",
                   "the well-known quotation; matches whisper.cpp's README transcript",
                   "J. F. Kennedy inaugural address, 1961 (US government work, public domain)")]


def _scaled_size(width: int, height: int) -> tuple[int, int]:
    """The output size: at most MAX_SIDE on the long side, even dimensions (yuv420p needs them)."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _cfr_frames(container: av.container.InputContainer, t0: float, t1: float | None,
                src_rate: float) -> Iterator[av.VideoFrame]:
    """Frames at a constant FPS over [t0, t1): each output instant shows the latest source frame at or before it.

    A source frame that starts less than half an output period after an instant already counts for it. Sources
    run at 22-30 fps; holding frames this way keeps picture and sound aligned within a frame. With no t1 the
    clip ends where the last source frame's own duration ends.
    """
    k = 0
    held: av.VideoFrame | None = None
    half = 0.5 / FPS
    end = float("inf") if t1 is None else t1
    for frame in container.decode(video=0):
        t = float(frame.time or 0.0)
        while held is not None and t0 + k / FPS + half < t and t0 + k / FPS < end - 1e-6:
            yield held
            k += 1
        held = frame
    if held is None:
        return
    if t1 is None:
        end = float(held.time or 0.0) + 1.0 / (src_rate or FPS)
    while t0 + k / FPS < end - 1e-6:
        yield held
        k += 1


def _decode_audio(data: bytes, rate: int) -> tuple[np.ndarray, float]:
    """All audio of a file as mono float32 at ``rate``, and the time of its first sample.

    Args:
        data: the file's bytes.
        rate: output sample rate.

    Returns:
        (samples, start time in seconds on the file's timeline).
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks: list[np.ndarray] = []
    start: float | None = None
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            if start is None:
                start = float(frame.time or 0.0)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise SystemExit("no audio in the source")
    return np.concatenate(chunks).astype(np.float32), start or 0.0


def _write_audio(container: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray,
                 rate: int) -> None:
    """Encode mono float samples through a FIFO, since encoders take fixed-size frames."""
    fifo = av.AudioFifo()
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    frame.pts = 0
    fifo.write(frame)
    size = stream.codec_context.frame_size or 960
    while fifo.samples > 0:
        chunk = fifo.read(min(size, fifo.samples))
        if chunk is None:
            break
        for packet in stream.encode(chunk):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def build_clip(clip: Clip, mirror: Path, out_dir: Path) -> str:
    """Trim and re-encode one clip with its own audio.

    Args:
        clip: what to build.
        mirror: folder holding the snapshots.
        out_dir: the ``footage`` folder.

    Returns:
        A sentence saying what was done, for the notice.
    """
    data = clip.repo.read(mirror, clip.path)
    audio, audio_start = _decode_audio(data, CLIP_AUDIO_RATE)
    dst = out_dir / f"{clip.name}.mp4"
    with av.open(io.BytesIO(data)) as src:
        vin = src.streams.video[0]
        width, height = vin.codec_context.width, vin.codec_context.height
        src_rate = float(vin.average_rate or 0)
        first = next(src.decode(video=0))
        t0 = float(first.time or 0.0) + clip.start
    ow, oh = _scaled_size(width, height)
    t1 = None if clip.duration is None else t0 + clip.duration
    frames = 0
    with av.open(io.BytesIO(data)) as src, av.open(str(dst), "w", format="mp4") as out:
        vout = out.add_stream("libx264", rate=FPS)
        vout.width, vout.height, vout.pix_fmt = ow, oh, "yuv420p"
        vout.codec_context.time_base = Fraction(1, FPS)
        vout.options = {"crf": CRF, "preset": "slow"}
        aout = out.add_stream("aac", rate=CLIP_AUDIO_RATE)
        aout.layout = "mono"
        aout.bit_rate = 96_000
        for frame in _cfr_frames(src, t0, t1, src_rate):
            picture = frame.reformat(width=ow, height=oh, format="yuv420p")
            picture.pts = frames
            picture.time_base = Fraction(1, FPS)
            for packet in vout.encode(picture):
                out.mux(packet)
            frames += 1
        for packet in vout.encode(None):
            out.mux(packet)
        first_sample = max(0, round((t0 - audio_start) * CLIP_AUDIO_RATE))
        wanted = round(frames / FPS * CLIP_AUDIO_RATE)
        piece = audio[first_sample:first_sample + wanted]
        piece = np.pad(piece, (0, wanted - piece.size))
        _write_audio(out, aout, piece, CLIP_AUDIO_RATE)
    scaled = f", scaled to {ow}x{oh}" if (ow, oh) != (width, height) else ""
    trim = (f"kept {clip.start:.2f}-{clip.start + frames / FPS:.2f} s" if clip.start or clip.duration is not None
            else f"whole clip ({frames / FPS:.2f} s)")
    return (f"{trim}; {width}x{height} {src_rate:.2f} fps re-timed to constant {FPS} fps{scaled}; "
            f"H.264 crf {CRF}; audio to AAC 48 kHz mono")


def build_speech(item: Speech, mirror: Path, out_dir: Path) -> float:
    """Re-encode one recording as 16 kHz mono Opus.

    Args:
        item: what to build.
        mirror: folder holding the snapshots.
        out_dir: the ``speech`` folder.

    Returns:
        The recording's duration in seconds.
    """
    samples, _ = _decode_audio(item.repo.read(mirror, item.path), SPEECH_RATE)
    with av.open(str(out_dir / f"{item.name}.opus"), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=SPEECH_RATE)
        stream.layout = "mono"
        stream.bit_rate = SPEECH_BITRATE
        _write_audio(out, stream, samples, SPEECH_RATE)
    return samples.size / SPEECH_RATE


def _write_notice(notice: Notice, mirror: Path, out: Path, speech_seconds: dict[str, float]) -> None:
    """Write NOTICE.md and copy every source repository's licence file."""
    lic_dir = out / "licenses"
    lic_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for repo in notice.repos.values():
        if repo.license_copy not in seen:
            seen.add(repo.license_copy)
            (lic_dir / repo.license_copy).write_bytes(repo.read(mirror, repo.license_path))
    (lic_dir / "TACOTRON2_TRANSCRIPTS_BSD-3-Clause.txt").write_bytes(
        TACOTRON2.read(mirror, TACOTRON2.license_path))
    totals = {lang: sum(sec for name, sec in speech_seconds.items() if name.startswith(lang + "_"))
              for lang in ("en", "de", "fr")}
    lines = [
        "# Sources and licences of data/",
        "",
        "Made by `tools/prepare_data.py` from snapshots of the repositories below; every row names the repository, "
        "the commit the file was read at, its path there, the repository's licence (its text is in `licenses/`), "
        "the origin and terms of the footage or corpus itself, and what was done to the file.",
        "",
        f"Speech totals: English {totals['en'] / 60:.1f} min, German {totals['de'] / 60:.1f} min, "
        f"French {totals['fr'] / 60:.1f} min. LJSpeech transcripts come from NVIDIA/tacotron2 "
        f"(`{TACOTRON2.commit}`, `filelists/ljs_audio_text_*_filelist.txt`, BSD-3-Clause, licence in "
        "`licenses/TACOTRON2_TRANSCRIPTS_BSD-3-Clause.txt`).",
        "",
        "| file | repository | commit | path | licence; origin of the content | what was done |",
        "|---|---|---|---|---|---|",
        *notice.rows,
        "",
    ]
    (out / "NOTICE.md").write_text("\n".join(lines), encoding="utf-8")



def main(argv: list[str] | None = None) -> int:
    """Build every file of the set.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mirror", type=Path, required=True, help="folder of <owner>+<name>/repo snapshots")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output folder (default data)")
    parser.add_argument("--only", choices=("footage", "speech"), help="build one part only")
    args = parser.parse_args(argv)
    notice = Notice()
    speech_seconds: dict[str, float] = {}
    if args.only in (None, "footage"):
        footage = args.out / "footage"
        footage.mkdir(parents=True, exist_ok=True)
        for clip in CLIPS:
            done = build_clip(clip, args.mirror, footage)
            notice.add(f"footage/{clip.name}.mp4", clip.repo, clip.path, done, clip.footage)
            print(f"footage/{clip.name}.mp4: {done}")
    if args.only in (None, "speech"):
        speech_dir = args.out / "speech"
        speech_dir.mkdir(parents=True, exist_ok=True)
        items = _lj_speech(args.mirror) + _hifi_tts(args.mirror) + _fleurs(args.mirror) + _jfk()
        lines = []
        for item in items:
            seconds = build_speech(item, args.mirror, speech_dir)
            speech_seconds[item.name] = seconds
            lines.append(f"{item.name}|{item.text}")
            notice.add(f"speech/{item.name}.opus", item.repo, item.path,
                       f"{seconds:.2f} s; decoded, mixed to mono, resampled to 16 kHz, Opus {SPEECH_BITRATE // 1000} "
                       f"kb/s; transcript from {item.text_source}", item.corpus)
        (speech_dir / "transcripts.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"speech: {len(items)} files, {sum(speech_seconds.values()) / 60:.1f} min")
    _write_notice(notice, args.mirror, args.out, speech_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
