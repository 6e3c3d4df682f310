"""The lip-sync stage as an interface: frames with timing, audio and speaker data in, frames out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lipsync_service.media.types import FrameJob, SoundtrackLevels, SpeechAudio, VideoInfo

if TYPE_CHECKING:
    from lipsync_service.job import JobConfig


class FrameProcessor(ABC):
    """Streaming frame processor.

    The pipeline calls `start` once, then `push` for every output frame in order, then `flush`.
    `push` may hold frames back (look-ahead for smoothing) and returns those now ready, in order;
    `flush` returns the rest. Every pushed frame comes back exactly once.
    """

    #: Seconds of speech past a frame's time that must be decoded before that frame is pushed.
    audio_lookahead_s: float = 0.0
    #: Most frames one `push` hands back at once (a generator batch). The pipeline's encoder queue holds two such
    #: bursts, so the job thread goes on with the next frames while the encoder works through the last ones.
    release_burst: int = 1
    #: Whether returned frames may carry deferred work (FrameJob.finish): the pipeline then runs it on a thread of
    #: its own between this processor and the encoder, in order, so it overlaps with the next frames' work.
    defers_finish: bool = False

    @property
    def wants_soundtrack(self) -> bool:
        """Whether `start` should get the loudness of the input video's own audio (to find who speaks)."""
        return False

    def configure(self, cfg: JobConfig) -> None:
        """Take the job's client options (e.g. head_movement_speed) before `start`; ignored by default."""
        return None

    @abstractmethod
    def start(self, video: VideoInfo, audio: SpeechAudio, soundtrack: SoundtrackLevels | None = None) -> None:
        """Prepare for a stream (soundtrack: the input's own audio levels, when asked for and present)."""

    @abstractmethod
    def push(self, job: FrameJob) -> list[FrameJob]:
        """Accept the next frame; return the frames that are finished, in order."""

    @abstractmethod
    def flush(self) -> list[FrameJob]:
        """Finish and return every frame still held."""

    def close(self) -> None:  # noqa: B027 - optional: a processor that holds nothing keeps this no-op
        """Release resources; called once, also after a failure."""

    @property
    def model_info(self) -> str:
        """What the service reports as model_info."""
        return "none"


class PassThroughProcessor(FrameProcessor):
    """Returns every frame untouched. Used until a lip-sync model is configured, and for bypass."""

    def start(self, video: VideoInfo, audio: SpeechAudio, soundtrack: SoundtrackLevels | None = None) -> None:
        return None

    def push(self, job: FrameJob) -> list[FrameJob]:
        return [job]

    def flush(self) -> list[FrameJob]:
        return []

    @property
    def model_info(self) -> str:
        return "passthrough"


def drain(processor: FrameProcessor, jobs: Iterable[FrameJob]) -> list[FrameJob]:
    """Run jobs through a processor and return all output frames, finished (for tests and offline use)."""
    out: list[FrameJob] = []
    for job in jobs:
        out.extend(processor.push(job))
    out.extend(processor.flush())
    return [job.complete() for job in out]
