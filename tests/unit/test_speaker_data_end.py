"""Speaker data that ends before the video, through the lip-sync processor on a real talking clip: every frame
after the last described one is in automatic mode, so the face is re-drawn in each of them (no flicker)."""

from __future__ import annotations

import av

from lipsync_service.core.faces import FaceDetector
from lipsync_service.core.neural import build_neural_processor
from lipsync_service.job import JobConfig
from lipsync_service.media.types import FrameJob
from lipsync_service.pipeline import run_files
from lipsync_service.settings import Settings
from lipsync_service.speakers import FrameSpeakers, SpeakerBox
from tests.core.fakes import EchoBackend

DESCRIBED = 40


def test_every_frame_after_the_data_ends_is_re_drawn(media, tmp_path):
    video, audio = media("talking_3.mp4"), media("speech_en_2.wav")
    detector = FaceDetector()
    frames = []
    with av.open(str(video)) as container:
        for i, decoded in enumerate(container.decode(video=0)):
            if i == DESCRIBED:
                break
            face = max(detector.detect_frame(decoded.reformat(format="yuv420p")), key=lambda f: f.area)
            x0, y0, x1, y1 = face.box
            frames.append(FrameSpeakers(i, (SpeakerBox(x0, y0, x1 - x0, y1 - y0, speaker_id=1, is_speaking=True),)))
    processor = build_neural_processor(Settings(), EchoBackend(gain=0.5))
    changed: dict[int, bool] = {}
    push, flush = processor.push, processor.flush

    def record(out: list[FrameJob]) -> list[FrameJob]:
        changed.update((job.index, job.changed) for job in out)
        return out

    processor.push = lambda job: record(push(job))  # type: ignore[method-assign]
    processor.flush = lambda: record(flush())  # type: ignore[method-assign]
    result = run_files(JobConfig(), Settings(), processor, video, audio, tmp_path / "out.mp4", speakers=frames)
    assert result.frames > DESCRIBED + 20
    unedited = [i for i in range(result.frames) if not changed.get(i)]
    assert unedited == [], f"frames left unedited: {unedited}"
