"""The request stream read into the job's inputs: config first, then media chunks and speaker data."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from lipsync_service import config as job_config
from lipsync_service._proto.nvidia.ai4m.lipsync.v1 import lipsync_pb2
from lipsync_service.errors import Cancelled, InvalidInput, ResourceExhausted
from lipsync_service.logs import call_log as log
from lipsync_service.media.audio import AudioTrack
from lipsync_service.media.pipe import ByteStream
from lipsync_service.server.budget import StreamBudget
from lipsync_service.server.feeder import Feeder
from lipsync_service.server.video_intake import VideoIntake
from lipsync_service.settings import Settings
from lipsync_service.speakers import SpeakerData, estimated_bytes, frames_from_proto


class Intake:
    """Reads one call's requests and checks them; the inputs it builds are what the job runs on."""

    def __init__(self, settings: Settings, post: Callable[[lipsync_pb2.LipsyncResponse], None],
                 start_job: Callable[[ByteStream | Path], None], budget: StreamBudget) -> None:
        self._settings = settings
        self._budget = budget
        self._post = post  # queues a response (the config echo) on the call's response stream
        self.cfg: job_config.JobConfig | None = None
        self.speech: AudioTrack | None = None
        self.background: AudioTrack | None = None
        self.speakers: SpeakerData | None = None
        self.video = VideoIntake(settings, start_job, self._set_waiting, budget)
        budget.hold("speaker data", lambda: self.speakers.held_bytes if self.speakers is not None else 0)
        budget.hold("decoded audio", lambda: sum(track.held_bytes for track in self.tracks()))
        self.speech_bytes = 0
        self.background_bytes = 0
        self.last_input = time.monotonic()  # when the client last sent something (input stall timeout)
        self.waiting_for_space = False  # a write waits on our own full buffer: that is no client stall
        self.done = False  # the client half-closed the request stream
        self._speech_feed: Feeder | None = None
        self._background_feed: Feeder | None = None

    async def read(self, requests: AsyncIterator[lipsync_pb2.LipsyncRequest]) -> None:
        """Read the request stream to its end. Raises LipsyncError for a request that breaks the protocol."""
        first = True
        async for request in requests:
            self.last_input = time.monotonic()
            kind = request.WhichOneof("lipsync_request")
            if kind == "config":
                if not first:
                    raise InvalidInput("config must be the first message of the stream, and come only once; "
                                       "it arrived after input data or a previous config")
                self._configure(request.config)
            else:
                if first:
                    self._configure(None)
                if kind == "input":
                    await self._take_input(request.input)
            first = False
            self.last_input = time.monotonic()
        if first:
            self._configure(None)
        self.done = True
        self._end_of_input()

    def abort(self) -> None:
        """The call ended: wake every reader of the inputs with Cancelled, and close the speaker data."""
        for feed in (self.video.feed, self._speech_feed, self._background_feed):
            if feed is not None:
                feed.stream.abort(Cancelled(f"{feed.stream.name}: the call ended"))
        if self.speakers is not None:
            self.speakers.close()

    def release(self) -> None:
        """The job has ended: let the speaker data and the decoded audio go now. The call's own objects reference
        each other and wait for the garbage collector; what a client sent need not wait with them."""
        for track in self.tracks():
            track.release()
        self.speakers = self.speech = self.background = None

    def tracks(self) -> list[AudioTrack]:
        """The audio decoders started so far (closing them blocks: do it off the event loop)."""
        return [t for t in (self.speech, self.background) if t is not None]

    def _configure(self, msg: lipsync_pb2.LipsyncConfig | None) -> None:
        cfg = job_config.from_proto(msg)
        self.cfg = cfg
        self._post(lipsync_pb2.LipsyncResponse(config=job_config.to_proto(cfg)))
        s = self._settings
        speech_stream = ByteStream(s.stream_buffer_bytes, name="speech audio")
        self._speech_feed = Feeder(speech_stream, self._budget)
        # Started at once so a transactional job's audio is consumed while the video is spooled.
        self.speech = AudioTrack(speech_stream, cfg.input_audio_codec, name="speech", max_duration_s=s.max_duration_s)
        self.speech.start()
        if cfg.background is not None:
            bg_stream = ByteStream(s.stream_buffer_bytes, name="background audio")
            self._background_feed = Feeder(bg_stream, self._budget)
            self.background = AudioTrack(bg_stream, cfg.background.codec, name="background",
                                         max_duration_s=s.max_duration_s)
            self.background.start()
        if cfg.speaker_info_provided:
            self.speakers = SpeakerData()
        log.debug("config: %s", cfg)

    def _set_waiting(self, waiting: bool) -> None:
        self.waiting_for_space = waiting
        if not waiting:
            # Time spent waiting on our own buffers is not the client's stall.
            self.last_input = time.monotonic()

    async def _take_input(self, data: lipsync_pb2.LipsyncInputData) -> None:
        size = data.ByteSize()
        if size > self._settings.max_message_bytes:
            raise ResourceExhausted(
                f"an input message of {size} bytes is over the limit of {self._settings.max_message_bytes} bytes; "
                "send the media in smaller chunks (the reference client uses 64 KiB)")
        if data.HasField("video_file_data") and data.video_file_data:
            await self.video.take(data.video_file_data)
        if data.HasField("audio_file_data") and data.audio_file_data:
            assert self._speech_feed is not None
            self.speech_bytes += len(data.audio_file_data)
            await self._speech_feed.write(data.audio_file_data, self._set_waiting)
        if data.HasField("background_audio_file_data") and data.background_audio_file_data:
            if self._background_feed is None:
                raise InvalidInput(
                    "background audio data arrived, but the config did not announce it: set "
                    "background_audio_config.is_background_audio_provided (and its codec and volume)")
            self.background_bytes += len(data.background_audio_file_data)
            await self._background_feed.write(data.background_audio_file_data, self._set_waiting)
        if len(data.per_frame_speaker_infos):
            if self.speakers is None:
                raise InvalidInput("speaker data arrived, but the config has is_speaker_info_provided false; "
                                   "set it to true to send per-frame speaker info")
            # Checked as a whole on arrival: values, duplicates, and frames past the video's frame count
            # once its header has stated it (the job sets it), so a bad batch fails the call at once.
            frames = frames_from_proto(data.per_frame_speaker_infos)
            self._budget.check("speaker data", estimated_bytes(frames),
                               "send speaker data only for the video's frames, in batches along with the video")
            self.speakers.add_all(frames)

    def _end_of_input(self) -> None:
        assert self.cfg is not None
        log.debug("input complete: video %d bytes, speech %d bytes, background %d bytes",
                 self.video.bytes, self.speech_bytes, self.background_bytes)
        for feed in (self._speech_feed, self._background_feed, self.video.feed):
            if feed is not None:
                feed.stream.close()
        if self.speakers is not None:
            self.speakers.close()
        if self.video.bytes == 0:
            raise InvalidInput("no video data received: send the MP4 in input.video_file_data messages "
                               "before half-closing the stream")
        if self.speech_bytes == 0:
            raise InvalidInput("no speech audio received: send the WAV or MP3 in input.audio_file_data messages")
        if self._background_feed is not None and self.background_bytes == 0:
            raise InvalidInput("background_audio_config.is_background_audio_provided is true, but no "
                               "background_audio_file_data arrived")
        self.video.finish()
