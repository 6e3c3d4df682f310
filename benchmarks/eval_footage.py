"""The hard-footage set: clips composed from real talking-head footage (cuts, dissolves, fades, covered mouths, turned
heads, small faces, dark shots, faces that leave and return, two and three people with one talking, 4K close-ups),
each lip-synced through the offline runner and, with --server, through a real server process and the client.

Per clip it reports whether the job ended well, the shots found, which face was re-drawn and why, the faces kept as
they were, and (where the composition knows the truth) the share of frames in which the talking person was the one
re-drawn, and the largest change inside a covered mouth. Clips of people the active speaker detection was tuned on
and clips of people it never saw are reported apart (--held-out names a folder of clips it never saw).

    python benchmarks/eval_footage.py --held-out DIR [--server] [--out benchmarks/results/footage]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._media import shared  # noqa: E402
from lipsync_service.core.neural import build_neural_processor  # noqa: E402
from lipsync_service.core.processor import FrameProcessor  # noqa: E402
from lipsync_service.job import EncodingMode, JobConfig, VideoEncodingSpec  # noqa: E402
from lipsync_service.media.types import FrameJob  # noqa: E402
from lipsync_service.pipeline import run_files  # noqa: E402
from lipsync_service.settings import Settings  # noqa: E402
from tests import footage as F  # noqa: E402

LOSSLESS = dataclasses.replace(JobConfig(), video_encoding=VideoEncodingSpec(mode=EncodingMode.LOSSLESS))


@dataclasses.dataclass
class Case:
    name: str
    clip: F.Clip
    speech: np.ndarray
    held_out: bool = False
    with_soundtrack: bool = True
    # Per frame, the talking person's tile (x, y, w, h) when the composition knows who talks.
    talker_tiles: list[tuple[int, int, int, int] | None] | None = None
    # Per frame, a mask of occluder pixels (True where something covers the mouth).
    occluder: list[np.ndarray | None] | None = None
    note: str = ""
    # The frame shown in the picture strip (--strip), and a face box to show when no face is re-drawn there.
    strip_frame: int | None = None
    strip_box: tuple[float, float, float, float] | None = None


def _tile_of(clip: F.Clip) -> list[tuple[int, int, int, int] | None]:
    return [t["boxes"][t["talker"]] for t in clip.truth]


def two_people(talker: F.Clip, other: F.Clip, heights: tuple[int, int], size: tuple[int, int],
               talker_first: bool = True) -> F.Clip:
    people = [talker, other] if talker_first else [other, talker]
    return F.side_by_side(people, list(heights), size, talker=0 if talker_first else 1)


def covered(clip: F.Clip, frames: range, kind: str,
            rng: np.random.Generator) -> tuple[F.Clip, list, tuple[float, float, float, float] | None]:
    """The clip with a flat skin-coloured patch, or a hand-like shape, over the mouth in `frames`."""
    from lipsync_service.core.faces import FaceDetector
    from lipsync_service.core.landmarks import FaceLandmarker

    detector, landmarker = FaceDetector(), FaceLandmarker()
    out, masks = [], []
    box = None
    for i, img in enumerate(clip.frames):
        if i not in frames:
            out.append(img)
            masks.append(None)
            continue
        if box is None or i % 5 == 0:
            faces = detector.detect_image(img)
            box = max(faces, key=lambda f: f.area).box if faces else box
        mesh = landmarker.detect(img, box) if box is not None else None
        if mesh is None:
            out.append(img)
            masks.append(None)
            continue
        p = mesh.points[:, :2]
        centre = (p[13] + p[14]) / 2
        width = float(np.linalg.norm(p[61] - p[291]))
        cheek = p[187] if 0 <= int(p[187][1]) < img.shape[0] else centre
        colour = img[int(cheek[1]), int(cheek[0])].astype(int).tolist()
        mask = np.zeros(img.shape[:2], np.uint8)
        if kind == "patch":
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(0.8 * width), int(0.55 * width)), 0, 0, 360, 1, -1)
        else:
            # A hand from the side: a palm and four fingers across the mouth.
            x0, y0 = int(centre[0] - 1.4 * width), int(centre[1] - 0.45 * width)
            cv2.ellipse(mask, (x0, int(centre[1])), (int(0.6 * width), int(0.7 * width)), 0, 0, 360, 1, -1)
            for k in range(4):
                y = int(y0 + k * 0.28 * width)
                cv2.rectangle(mask, (x0, y), (int(centre[0] + 0.25 * width), y + int(0.22 * width)), 1, -1)
        img = img.copy()
        shade = np.clip(np.array(colour) + rng.normal(0, 2, 3), 0, 255).astype(np.uint8)
        img[mask > 0] = shade
        out.append(img)
        masks.append(mask > 0)
    return dataclasses.replace(clip, frames=out), masks, box


def dark(clip: F.Clip, gain: float, rng: np.random.Generator) -> F.Clip:
    frames = [np.clip(f.astype(np.float32) * gain + rng.normal(0, 3, f.shape), 0, 255).astype(np.uint8)
              for f in clip.frames]
    return dataclasses.replace(clip, frames=frames)


def dissolve(a: F.Clip, b: F.Clip, size: tuple[int, int], frames: int) -> F.Clip:
    fa = [F._fill(f, size) for f in a.frames]
    fb = [F._fill(f, size) for f in b.frames]
    mid = [(fa[-frames + k].astype(np.float32) * (1 - (k + 1) / (frames + 1))
            + fb[k].astype(np.float32) * ((k + 1) / (frames + 1))).astype(np.uint8) for k in range(frames)]
    audio = np.concatenate([a.audio if a.audio is not None else np.zeros(0, np.float32),
                            b.audio if b.audio is not None else np.zeros(0, np.float32)])
    return F.Clip(frames=fa[:-frames] + mid + fb[frames:], fps=a.fps, audio=audio, rate=a.rate)


def fade_through_black(a: F.Clip, b: F.Clip, size: tuple[int, int], frames: int) -> F.Clip:
    fa = [F._fill(f, size) for f in a.frames]
    fb = [F._fill(f, size) for f in b.frames]
    out = fa[:-frames] + [(f * (1 - (k + 1) / frames)).astype(np.uint8) for k, f in enumerate(fa[-frames:])]
    out += [(f * ((k + 1) / frames)).astype(np.uint8) for k, f in enumerate(fb[:frames])] + fb[frames:]
    audio = np.concatenate([a.audio if a.audio is not None else np.zeros(0, np.float32),
                            b.audio if b.audio is not None else np.zeros(0, np.float32)])
    return F.Clip(frames=out, fps=a.fps, audio=audio, rate=a.rate)


def wide_shot(clip: F.Clip, face_px: int, size: tuple[int, int], source_face_px: float) -> F.Clip:
    w, h = size
    s = face_px / source_face_px
    frames = []
    for f in clip.frames:
        t = cv2.resize(f, (max(2, int(f.shape[1] * s)), max(2, int(f.shape[0] * s))), interpolation=cv2.INTER_AREA
                       if s < 1 else cv2.INTER_CUBIC)
        canvas = np.full((h, w, 3), 70, np.uint8)
        th, tw = min(t.shape[0], h), min(t.shape[1], w)
        y0, x0 = (h - th) // 2, (w - tw) // 2
        canvas[y0 : y0 + th, x0 : x0 + tw] = t[:th, :tw]
        frames.append(canvas)
    return dataclasses.replace(clip, frames=frames)


def turn_taking(first: F.Clip, second: F.Clip, heights: tuple[int, int], size: tuple[int, int]) -> F.Clip:
    """One shot: the first person talks while the second listens (a still frame), then the other way round."""
    part1 = F.side_by_side([first, F.still(second, first.seconds())], list(heights), size, talker=0)
    part2 = F.side_by_side([F.still(first, second.seconds()), second], list(heights), size, talker=1)
    return F.concat([part1, part2])


def build_cases(held_dir: Path | None, seed: int = 7) -> list[Case]:
    rng = np.random.default_rng(seed)
    long_speech = _wav(shared("speech_16k_12s.wav"))
    t1 = F.load(shared("talking_1.mp4"), seconds=5)
    t3 = F.load(shared("talking_3.mp4"), seconds=5)
    static = F.load(shared("face_static_720p_streamable.mp4"), seconds=5)
    cases = [
        Case("cut: two people", F.cut([t1, t3], (512, 512)), long_speech, strip_frame=len(t1.frames) + 20),
        Case("dissolve: two people", dissolve(t1, t3, (512, 512), 12), long_speech),
        Case("fade through black", fade_through_black(t3, t1, (512, 512), 8), long_speech),
    ]
    leave = dataclasses.replace(t3, frames=list(t3.frames))
    for i in range(40, 70):
        leave.frames[i] = np.ascontiguousarray(np.broadcast_to(
            leave.frames[i][:8, :8].mean(axis=(0, 1)).astype(np.uint8), leave.frames[i].shape))
    cases.append(Case("face leaves and returns", leave, long_speech, strip_frame=90))
    for kind in ("patch", "hand"):
        clip, masks, box = covered(t3, range(40, 65), kind, rng)
        cases.append(Case(f"mouth covered: {kind}", clip, long_speech, occluder=masks, strip_frame=52, strip_box=box))
    cases.append(Case("low light (x0.3, noise)", dark(t3, 0.3, rng), long_speech, strip_frame=60))
    source_face = 338.0  # talking_3's detector box height at 590 px
    for px in (60, 80, 120):
        cases.append(Case(f"wide shot: {px} px face in 1080p", wide_shot(t3, px, (1920, 1080), source_face),
                          long_speech, strip_frame=60 if px == 60 else None))
    cases.append(Case("4K close-up", wide_shot(dataclasses.replace(t3, frames=t3.frames[:50]), 1500, (3840, 2160),
                                               source_face), long_speech, strip_frame=30))
    tuned = two_people(t1, static, (240, 340), (1024, 384))
    cases.append(Case("two people, smaller talks (tuned ids)", tuned, long_speech, talker_tiles=_tile_of(tuned)))
    if held_dir is not None:
        cases += held_out_cases(held_dir, long_speech)
    return cases


def held_out_cases(held_dir: Path, speech: np.ndarray) -> list[Case]:
    talker = F.load(held_dir / "vr_woman_glasses_office.mp4", seconds=5)
    mover = F.load(held_dir / "vr_woman_bluebg.mp4", seconds=5)
    turned = F.load(held_dir / "vox2_man_turned.mp4", seconds=7)
    portrait = cv2.imread(str(shared("portrait.png")))
    still_portrait = F.still(F.Clip(frames=[portrait[:, 398:1422]], audio=None), talker.seconds())
    still_mover = F.still(mover, talker.seconds())
    out = [Case("turned head (25-38 deg yaw)", turned, speech, held_out=True, strip_frame=100)]
    for name, clip in [
        ("two people, smaller talks, listener still", two_people(talker, still_portrait, (250, 360), (1024, 400))),
        ("two people, larger talks, listener still", two_people(talker, still_portrait, (360, 250), (1024, 400))),
        ("two people, smaller talks, other mouth moving", two_people(talker, mover, (250, 360), (1024, 400))),
        ("three people, one talks",
         F.side_by_side([still_mover, talker, still_portrait], [300, 260, 330], (1280, 420), talker=1)),
        ("turn-taking in one shot", turn_taking(talker, F.load(shared("talking_3.mp4"), seconds=5), (300, 300),
                                                (1024, 360))),
    ]:
        out.append(Case(name, clip, speech, held_out=True, talker_tiles=_tile_of(clip),
                        strip_frame=60 if name.startswith(("two people, smaller talks, listener", "three")) else None))
        if "listener still" in name and "smaller" in name:
            out.append(Case(name + ", no soundtrack", clip, speech, held_out=True, with_soundtrack=False,
                            talker_tiles=_tile_of(clip)))
    return out


def _wav(path: Path) -> np.ndarray:
    clip_audio = F._audio(path, 16000, 0.0, 12.0)
    assert clip_audio is not None
    return clip_audio


class _Recording(FrameProcessor):
    """A processor that passes everything to another and keeps, per output frame, the faces it re-drew."""

    def __init__(self, inner: FrameProcessor) -> None:
        self.inner = inner
        self.audio_lookahead_s = inner.audio_lookahead_s
        self.release_burst = inner.release_burst
        self.defers_finish = inner.defers_finish
        self.decided: dict[int, list] = {}

    @property
    def wants_soundtrack(self) -> bool:
        return self.inner.wants_soundtrack

    def configure(self, cfg: JobConfig) -> None:
        self.inner.configure(cfg)

    def start(self, video, audio, soundtrack=None) -> None:  # type: ignore[no-untyped-def]
        self.inner.start(video, audio, soundtrack)

    def push(self, job: FrameJob) -> list[FrameJob]:
        return self._keep(self.inner.push(job))

    def flush(self) -> list[FrameJob]:
        return self._keep(self.inner.flush())

    def close(self) -> None:
        self.inner.close()

    def _keep(self, jobs: list[FrameJob]) -> list[FrameJob]:
        for job in jobs:
            self.decided[job.index] = list(job.meta.get("lipsync_drawn", ()))
        return jobs


def run_case(case: Case, work: Path) -> dict:
    video = F.write(case.clip, work / "in.mp4", lossless=True, with_audio=case.with_soundtrack)
    audio = F.write_wav(case.speech, 16000, work / "speech.wav")
    settings = Settings()
    processor = _Recording(build_neural_processor(settings))
    out = work / "out.mp4"
    start = time.perf_counter()
    row: dict = {"clip": case.name, "held_out": case.held_out, "frames_in": len(case.clip.frames),
                 "size": f"{case.clip.size[0]}x{case.clip.size[1]}"}
    try:
        result = run_files(LOSSLESS, settings, processor, video, audio, out)
    except Exception as exc:  # noqa: BLE001 - the report says what failed
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        return row
    row.update(ok=True, frames=result.frames, seconds=round(time.perf_counter() - start, 1), shots=result.shots,
               without_face=result.frames_without_face, kept=result.frames_kept,
               redrawn=[r.describe() for r in result.redrawn][:6])
    if case.talker_tiles is not None:
        hits = 0
        for i, tile in enumerate(case.talker_tiles[: result.frames]):
            drawn = processor.decided.get(i, [])
            if tile is not None and any(_inside(box, tile) for _, _, box in drawn):
                hits += 1
        row["talker_chosen"] = round(hits / max(1, result.frames), 3)
    if case.occluder is not None:
        row["occluder_max_change"] = _occluder_change(video, out, case.occluder)
    if case.strip_frame is not None:
        row["_tile"] = _strip_tile(case, video, out, processor.decided)
    return row


def _strip_tile(case: Case, video: Path, out: Path, decided: dict[int, list]) -> np.ndarray | None:
    """Input beside output around the mouth of the face re-drawn in the case's strip frame, zoomed 3x."""
    import av

    k = case.strip_frame
    assert k is not None
    drawn = decided.get(k, [])
    box = drawn[0][2] if drawn else case.strip_box
    if box is None:
        return None
    pictures = []
    for path in (video, out):
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == k:
                    pictures.append(frame.to_ndarray(format="bgr24"))
                    break
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, y1 + 0.78 * h
    half = 0.42 * max(w, h)
    crops = []
    for pic in pictures:
        x0, y0 = int(max(0, cx - half)), int(max(0, cy - 0.6 * half))
        crop = pic[y0 : int(cy + 0.6 * half), x0 : int(cx + half)]
        crops.append(cv2.resize(crop, (240, int(240 * crop.shape[0] / max(1, crop.shape[1]))),
                                interpolation=cv2.INTER_NEAREST if crop.shape[1] < 240 else cv2.INTER_AREA))
    tile = np.hstack(crops)
    label = np.full((22, tile.shape[1], 3), 255, np.uint8)
    why = drawn[0][1] if drawn else "left as it was"
    cv2.putText(label, f"{case.name}: frame {k}, {why}"[:70], (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.vstack([label, tile])


def write_strip(rows: list[dict], path: Path) -> None:
    """The tiles of every case, input left and output right, one under the other."""
    tiles = [r.pop("_tile") for r in rows if r.get("_tile") is not None]
    if not tiles:
        return
    width = max(t.shape[1] for t in tiles)
    padded = [np.pad(t, ((0, 4), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    cv2.imwrite(str(path), np.vstack(padded))


def _no_tile(case: Case, work: Path) -> dict:
    return run_case(dataclasses.replace(case, strip_frame=None), work)


def _inside(box: tuple[float, float, float, float], tile: tuple[int, int, int, int]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x, y, w, h = tile
    return x <= cx < x + w and y <= cy < y + h


def _occluder_change(video: Path, out: Path, masks: list) -> int:
    import av

    worst = 0
    with av.open(str(video)) as a, av.open(str(out)) as b:
        for i, (fa, fb) in enumerate(zip(a.decode(video=0), b.decode(video=0))):
            mask = masks[i] if i < len(masks) else None
            if mask is None:
                continue
            ya, yb = fa.to_ndarray(format="gray"), fb.to_ndarray(format="gray")
            worst = max(worst, int(np.abs(ya.astype(int) - yb.astype(int))[mask].max()))
    return worst


def through_server(cases: list[Case], work: Path) -> dict[str, str]:
    """Each clip through a real `lipsync-service serve` process and `lipsync-client`: the client's exit status."""
    ports = [_free_port(), _free_port()]
    env = dict(os.environ, NIM_GRPC_API_PORT=str(ports[0]), NIM_HTTP_API_PORT=str(ports[1]))
    server = subprocess.Popen([sys.executable, "-m", "lipsync_service.cli", "serve"], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(work / "server.log", "wb"))  # noqa: SIM115
    out: dict[str, str] = {}
    try:
        _wait_ready(ports[1])
        for k, case in enumerate(cases):
            d = work / f"s{k}"
            d.mkdir()
            video = F.write(case.clip, d / "in.mp4", with_audio=case.with_soundtrack)
            audio = F.write_wav(case.speech, 16000, d / "speech.wav")
            done = subprocess.run([sys.executable, "-m", "lipsync_service.client.cli", "--target",
                                   f"127.0.0.1:{ports[0]}", "--video-input", str(video), "--audio-input", str(audio),
                                   "--output", str(d / "out.mp4"), "--quiet"], capture_output=True, text=True,
                                  timeout=900)
            out[case.name] = "OK" if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    log = (work / "server.log").read_text(errors="replace")
    if "Traceback" in log:
        out["server log"] = "has a traceback"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(http_port: int, timeout: float = 120.0) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v1/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", type=Path, help="folder with the held-out clips (see the README)")
    parser.add_argument("--server", action="store_true", help="also run every clip through a real server")
    parser.add_argument("--only", help="run only the clips whose name contains this")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "footage")
    parser.add_argument("--strip", type=Path, help="write a picture strip of the cases (input | output, zoomed)")
    args = parser.parse_args()
    cases = build_cases(args.held_out)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="lipsync-footage-"))
    try:
        for k, case in enumerate(cases):
            d = work / str(k)
            d.mkdir()
            row = run_case(case, d) if args.strip else _no_tile(case, d)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "_tile"}), flush=True)
        if args.server:
            served = through_server(cases, work)
            for row in rows:
                row["server"] = served.get(row["clip"], "not run")
            print("server:", json.dumps(served, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.strip:
        write_strip(rows, args.strip)
    for row in rows:
        row.pop("_tile", None)
    (args.out / "footage.json").write_text(json.dumps(rows, indent=1))
    _table(rows)


def _table(rows: list[dict]) -> None:
    print("\n| clip | held out | ok | shots | talker chosen | occluder max change | kept | re-drawn |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {'yes' if r['held_out'] else 'no'} | {'yes' if r.get('ok') else r.get('error')} | "
              f"{r.get('shots', '')} | {r.get('talker_chosen', '')} | {r.get('occluder_max_change', '')} | "
              f"{r.get('kept', '')} | {'; '.join(r.get('redrawn', [])[:3])} |")


if __name__ == "__main__":
    main()

