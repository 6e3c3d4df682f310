"""Audio input: decode speech/background WAV or MP3 in a thread into mono float32 at the model and output rates."""

from __future__ import annotations

import bisect
import logging
import threading

import av
import numpy as np

from lipsync_service.errors import (
    Cancelled,
    InputTimeout,
    InternalError,
    InvalidInput,
    LipsyncError,
    ResourceExhausted,
    release_frames,
)
from lipsync_service.job import AudioCodec
from lipsync_service.media.av_errors import PYAV_ERRORS, GuardedSource, reason
from lipsync_service.media.pipe import ByteStream
from lipsync_service.media.types import MODEL_SAMPLE_RATE, Readable

log = logging.getLogger(__name__)

#: Sample rate of the audio written into the output file (Opus only takes 48 kHz; MP3 is fine with it too).
OUTPUT_SAMPLE_RATE = 48000

# libavformat reads up to 5 MB / 5 s of input to "find stream info" before returning from open; on a
# streamed upload that stalls decoding. WAV headers and MP3 frame headers say everything needed.
_OPEN_OPTIONS = {"probesize": "32768", "analyzeduration": "0"}

# Bytes looked at before decoding, to tell a WAV from an MP3 and give a precise mismatch message.
_SNIFF_BYTES = 12




def _looks_like_wav(head: bytes) -> bool:
    return head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE"


def _looks_like_mp3(head: bytes) -> bool:
    return head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)



def channel_mean(frame: av.AudioFrame) -> np.ndarray:
    """The mean of a packed float32 frame's channels, as float32 [samples].

    Packed ("flt"), not planar: a packed frame is one buffer whatever its channel count, while PyAV reads the planes
    of a planar frame with 8 or more channels past the frame's plane table and crashes the process (a WAV header
    claiming 8 channels did, in the fuzz campaign).
    """
    channels = max(1, len(frame.layout.channels))
    return frame.to_ndarray().reshape(-1, channels).mean(axis=1, dtype=np.float32)

class _PrefixedReader:
    """A non-seekable reader that replays bytes already read from the source (for sniffing)."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = head
        self._source = source

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._source.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._source.read(n)


class _Samples:
    """Mono float32 samples at one rate, stored as a list of chunks that only grows at the end.

    The front can be released (see `AudioTrack` keep_behind_s) so a long track does not stay in memory
    once the consumer has moved past it; released chunks become None so indices stay valid.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.chunks: list[np.ndarray | None] = []
        self.starts: list[int] = []  # absolute index of each chunk's first sample
        self.head = 0  # first chunk not released
        self.total = 0  # samples appended so far (absolute end)

    @property
    def released(self) -> int:
        """Samples before this absolute index are gone."""
        return self.starts[self.head] if self.head < len(self.starts) else self.total

    def append(self, data: np.ndarray) -> None:
        if data.size:
            self.chunks.append(data)
            self.starts.append(self.total)
            self.total += data.size

    def trim_end(self, new_total: int) -> None:
        """Shorten (new_total < total) or zero-pad (new_total > total) the end."""
        if new_total > self.total:
            self.append(np.zeros(new_total - self.total, np.float32))
            return
        while self.total > new_total and len(self.chunks) > self.head:
            last = self.chunks[-1]
            assert last is not None  # chunks from head on are never released
            cut = self.total - new_total
            if cut >= last.size:
                self.chunks.pop()
                self.starts.pop()
                self.total -= last.size
            else:
                self.chunks[-1] = last[: last.size - cut]
                self.total -= cut

    def release_before(self, index: int) -> None:
        while self.head < len(self.chunks) - 1 and self.starts[self.head + 1] <= index:
            self.chunks[self.head] = None
            self.head += 1

    def read(self, start: int, count: int) -> np.ndarray:
        out = np.zeros(max(0, count), np.float32)
        lo, hi = max(start, 0), min(start + count, self.total)
        if hi <= lo:
            return out
        if lo < self.released:
            raise InternalError(
                f"audio samples [{lo}, {hi}) at {self.rate} Hz were already released: reads must move forward"
            )
        i = max(self.head, bisect.bisect_right(self.starts, lo) - 1)
        while i < len(self.chunks) and self.starts[i] < hi:
            chunk_start = self.starts[i]
            chunk = self.chunks[i]
            assert chunk is not None  # i >= head: not released
            a, b = max(lo, chunk_start), min(hi, chunk_start + chunk.size)
            if b > a:
                out[a - start:b - start] = chunk[a - chunk_start:b - chunk_start]
            i += 1
        return out


class _ModelView:
    """The track at 16 kHz, as the `SpeechAudio` protocol the lip-sync processor reads."""

    sample_rate = MODEL_SAMPLE_RATE

    def __init__(self, track: AudioTrack) -> None:
        self._track = track

    def wait_for(self, end_s: float) -> None:
        self._track.wait_for(end_s)

    def read(self, start_s: float, end_s: float) -> np.ndarray:
        return self._track.read_model(start_s, end_s)

    @property
    def duration_s(self) -> float | None:
        return self._track.duration_s


class AudioTrack:
    """Decodes one audio input (speech or background: WAV or MP3, any rate, any channels) in a worker thread,
    into float32 mono PCM at two rates: 16 kHz for the model and OUTPUT_SAMPLE_RATE for the output file.

    Channels are averaged (so a stereo file with equal channels keeps its level). Timing is sample-accurate:
    once decoded, each rate holds exactly round(duration * rate) samples, starting at the first input sample.

    Reads are expected to move forward, as the pipeline does: samples more than `keep_behind_s` before the
    start of the latest read are released so that a long track does not stay in memory, and the decoder pauses
    once it is `max_ahead_s` past the furthest point anyone waited for or read, so a client that sends its
    speech far ahead of its video leaves it compressed (8 to 60 times smaller than decoded, and counted in the
    call's memory budget) instead of decoded.
    """

    def __init__(self, source: Readable, codec: AudioCodec, *, name: str = "speech",
                 max_duration_s: float = 3600.0, keep_behind_s: float = 30.0, max_ahead_s: float = 20.0) -> None:
        """Prepare (but do not start) decoding.

        Args:
            source: readable binary file-like, possibly non-seekable (a ByteStream while streaming, an open
                file or BytesIO otherwise). Reads may block while bytes arrive.
            codec: the container the client declared: AudioCodec.WAV or AudioCodec.MP3.
            name: which input this is ("speech" or "background"), used in error messages.
            max_duration_s: longer inputs fail with ResourceExhausted.
            keep_behind_s: seconds kept before the latest read position (see class docstring).
            max_ahead_s: seconds decoded beyond the furthest point waited for or read (see class docstring).

        Raises:
            InvalidInput: the codec is not an input audio codec.
        """
        if codec not in (AudioCodec.WAV, AudioCodec.MP3):
            raise InvalidInput(f"{name} audio: codec {codec.value} is not supported as input; use WAV or MP3")
        self.name = name
        self._source = source
        self._codec = codec
        self._max_duration_s = max_duration_s
        self._keep_behind_s = keep_behind_s
        self._max_ahead_s = max_ahead_s
        self._wanted_s = 0.0  # the furthest point waited for or read
        self._model = _Samples(MODEL_SAMPLE_RATE)
        self._output = _Samples(OUTPUT_SAMPLE_RATE)
        self._cond = threading.Condition()
        self._done = False
        self._error: LipsyncError | None = None
        self._stop = False
        self._source_samples = 0
        self._source_rate: int | None = None
        self._source_channels: int | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.model = _ModelView(self)

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decoder thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"audio-{self.name}", daemon=False)
        self._thread.start()

    def close(self) -> None:
        """Stop decoding and join the thread; aborts the source when it is a ByteStream. Never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            if isinstance(self._source, ByteStream):
                # Wakes the decoder if it is blocked waiting for upload bytes.
                self._source.abort(Cancelled(f"{self.name} audio: track closed"))
            if self._thread is not None:
                self._thread.join(timeout=30)
                if self._thread.is_alive():
                    log.warning("%s audio decoder did not stop within 30 s", self.name)
                    return
            # The decoder's frames (its container and resamplers) that a kept error still holds.
            release_frames(self._error)
        except Exception:  # close must never raise: it runs in cleanup paths
            log.exception("closing %s audio failed", self.name)

    def release(self) -> None:
        """Let the decoded samples go now that nothing will read them (a server call's end): the call's objects
        may wait for the garbage collector, the samples need not."""
        with self._cond:
            for samples in (self._model, self._output):
                samples.release_before(samples.total)

    # Consumer side -----------------------------------------------------------------------------

    def wait_for(self, end_s: float, timeout: float | None = None) -> None:
        """Block until audio up to end_s is decoded at both rates, or the input has ended.

        Args:
            end_s: seconds from the start of the track.
            timeout: seconds to wait at most (None: no limit).

        Raises:
            InvalidInput: decoding failed (wrong codec, not audio, corrupt, empty).
            ResourceExhausted: the input is longer than max_duration_s.
            InputTimeout: timeout passed before the audio arrived.
            Cancelled: the track was closed or its stream aborted.
            InternalError: the track was not started, or the decoder crashed.
        """
        if self._thread is None:
            raise InternalError(f"{self.name} audio: wait_for called before start()")
        need_model = int(np.ceil(end_s * MODEL_SAMPLE_RATE - 1e-6))
        need_output = int(np.ceil(end_s * OUTPUT_SAMPLE_RATE - 1e-6))

        def ready() -> bool:
            return (self._done or self._error is not None or self._stop
                    or (self._model.total >= need_model and self._output.total >= need_output))

        with self._cond:
            self._want(end_s)
            if not self._cond.wait_for(ready, timeout):
                raise InputTimeout(
                    f"{self.name} audio: no audio up to {end_s:.2f} s after waiting {timeout:g} s; "
                    "send the audio along with the video"
                )
            if self._error is not None:
                raise self._error
            if self._stop and not self._done:
                raise Cancelled(f"{self.name} audio: track closed")

    def read_output(self, start: int, count: int) -> np.ndarray:
        """Samples [start, start+count) at OUTPUT_SAMPLE_RATE, float32 mono, zeros past the end.

        The caller waits (`wait_for`) first; samples not decoded yet read as zeros.
        """
        with self._cond:
            self._want((start + count) / OUTPUT_SAMPLE_RATE)
            self._release(self._output, start)
            return self._output.read(start, count)

    def read_model(self, start_s: float, end_s: float) -> np.ndarray:
        """Samples in [start_s, end_s) at 16 kHz, float32 mono; zeros before 0 and past the end."""
        start = int(round(start_s * MODEL_SAMPLE_RATE))
        count = int(round(end_s * MODEL_SAMPLE_RATE)) - start
        with self._cond:
            self._want(end_s)
            self._release(self._model, start)
            return self._model.read(start, count)

    @property
    def duration_s(self) -> float | None:
        """Exact duration (input samples / input rate) once fully decoded, else None."""
        with self._cond:
            if not self._done or not self._source_rate:
                return None
            return self._source_samples / self._source_rate

    @property
    def source_rate(self) -> int | None:
        """The input's sample rate, once its first frame is decoded."""
        return self._source_rate

    @property
    def source_channels(self) -> int | None:
        """The input's channel count, once its first frame is decoded."""
        return self._source_channels

    @property
    def done(self) -> bool:
        """True once the whole input is decoded (successfully)."""
        with self._cond:
            return self._done

    @property
    def held_bytes(self) -> int:
        """Memory the decoded samples kept now take (both rates)."""
        with self._cond:
            return sum(4 * (samples.total - samples.released) for samples in (self._model, self._output))

    def _want(self, end_s: float) -> None:
        # Called with the lock held: someone needs the audio up to end_s; the decoder may go on to end_s + ahead.
        if end_s > self._wanted_s:
            self._wanted_s = end_s
            self._cond.notify_all()

    def _release(self, samples: _Samples, start: int) -> None:
        samples.release_before(start - int(self._keep_behind_s * samples.rate))

    # Decoder thread ----------------------------------------------------------------------------

    def _fail(self, error: LipsyncError) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._decode()
        except LipsyncError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug or an unexpected PyAV failure: never leave waiters hanging
            log.exception("%s audio decoder crashed", self.name)
            self._fail(InternalError(f"{self.name} audio: decoder failed: {exc}"))

    def _sniff(self) -> _PrefixedReader:
        head = b""
        while len(head) < _SNIFF_BYTES:
            chunk = self._source.read(_SNIFF_BYTES - len(head))
            if not chunk:
                break
            head += chunk
        what = f"{self.name} audio"
        if not head:
            raise InvalidInput(f"{what}: no data was received")
        declared = self._codec.value.upper()
        if self._codec is AudioCodec.WAV and not _looks_like_wav(head):
            hint = " (it looks like MP3: set the codec to MP3)" if _looks_like_mp3(head) else ""
            raise InvalidInput(f"{what}: the data is not a WAV file{hint}; the declared codec is {declared}")
        if self._codec is AudioCodec.MP3 and _looks_like_wav(head):
            raise InvalidInput(f"{what}: the data is a WAV file but the declared codec is {declared}; "
                               "set the codec to WAV")
        return _PrefixedReader(head, self._source)

    def _decode(self) -> None:
        what = f"{self.name} audio"
        fmt = "wav" if self._codec is AudioCodec.WAV else "mp3"
        reader = GuardedSource(self._sniff())
        try:
            # Tags (ID3, RIFF INFO) are free text: undecodable bytes there must not fail the audio.
            container = av.open(reader, mode="r", format=fmt, container_options=_OPEN_OPTIONS,
                                metadata_errors="replace")
        except LipsyncError:
            raise
        except PYAV_ERRORS as exc:
            reader.raise_error()
            raise InvalidInput(f"{what}: cannot read the {fmt.upper()} data ({reason(exc)})") from exc
        try:
            reader.raise_error()
            if not container.streams.audio:
                raise InvalidInput(f"{what}: no audio stream in the {fmt.upper()} data")
            stream = container.streams.audio[0]
            resamplers: dict[int, av.AudioResampler] = {}
            targets = {MODEL_SAMPLE_RATE: self._model, OUTPUT_SAMPLE_RATE: self._output}
            max_samples: int | None = None
            try:
                for frame in container.decode(stream):
                    if self._stop:
                        return
                    if self._source_rate is None:
                        self._source_rate = frame.sample_rate
                        self._source_channels = len(frame.layout.channels)
                        max_samples = int(self._max_duration_s * frame.sample_rate)
                        # Keep the input's channels through resampling and average them ourselves:
                        # swresample's default stereo->mono matrix adds 3 dB.
                        resamplers = {rate: av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
                                      for rate in targets}
                    elif frame.sample_rate != self._source_rate or len(frame.layout.channels) != self._source_channels:
                        raise InvalidInput(f"{what}: the sample rate or channel count changes mid-stream "
                                           f"({self._source_rate} Hz x{self._source_channels} -> "
                                           f"{frame.sample_rate} Hz x{len(frame.layout.channels)})")
                    self._push(resamplers, targets, frame)
                    self._source_samples += frame.samples
                    self._wait_for_demand()
                    if max_samples is not None and self._source_samples > max_samples:
                        raise ResourceExhausted(f"{what} is longer than the limit of {self._max_duration_s:g} s")
                # The decoder stops at what looks like the end of the input; it may be our reader's error.
                reader.raise_error()
                if resamplers:
                    self._push(resamplers, targets, None)
            except LipsyncError:
                raise
            except PYAV_ERRORS as exc:
                reader.raise_error()
                at = self._source_samples / self._source_rate if self._source_rate else 0.0
                raise InvalidInput(f"{what}: the {fmt.upper()} data is corrupt or truncated after {at:.2f} s "
                                   f"({reason(exc)})") from exc
        finally:
            container.close()
        if self._source_samples == 0 or self._source_rate is None:  # the rate is known from the first samples on
            raise InvalidInput(f"{what}: the {fmt.upper()} data contains no audio samples")
        with self._cond:
            # Make each rate hold exactly round(duration * rate) samples: swresample may end one off.
            for rate, samples in targets.items():
                samples.trim_end(int(round(self._source_samples * rate / self._source_rate)))
            self._done = True
            self._cond.notify_all()

    def _wait_for_demand(self) -> None:
        """Pause while the decoded audio reaches max_ahead_s past what anyone waited for or read."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop
                                or self._model.total < (self._wanted_s + self._max_ahead_s) * MODEL_SAMPLE_RATE)

    def _push(self, resamplers: dict[int, av.AudioResampler], targets: dict[int, _Samples],
              frame: av.AudioFrame | None) -> None:
        converted: dict[int, list[np.ndarray]] = {}
        for rate, resampler in resamplers.items():
            converted[rate] = [channel_mean(out) for out in resampler.resample(frame)]
        with self._cond:
            for rate, arrays in converted.items():
                for array in arrays:
                    targets[rate].append(np.ascontiguousarray(array, dtype=np.float32))
            self._cond.notify_all()


def mix(speech: np.ndarray, background: np.ndarray, volume: float) -> np.ndarray:
    """Speech with background under it: speech + volume * background, clipped to [-1, 1].

    Args:
        speech: float32 mono samples.
        background: float32 mono samples at the same rate; truncated or zero-padded to the speech's length.
        volume: background gain, 0.0-1.0.

    Returns:
        float32 array of the speech's length.
    """
    out = np.array(speech, dtype=np.float32, copy=True)
    n = min(out.size, background.size)
    if n and volume:
        out[:n] += np.float32(volume) * background[:n].astype(np.float32, copy=False)
    np.clip(out, -1.0, 1.0, out=out)
    return out


def load_speech_file(path: str, *, max_duration_s: float = 24 * 3600.0) -> np.ndarray:
    """Decode a file's first audio track to 16 kHz mono float32 the way serving does.

    Training, `eval` and serving must hear the same level: a WAV or an MP3 (recognised by its first bytes)
    goes through `AudioTrack`, the very decoder a request's speech goes through. Any other container with
    an audio track (a video's own speech: MP4, MPG, MKV, FLAC...) is decoded with the same recipe:
    resampled to 16 kHz keeping its channels, the channels averaged (not FFmpeg's down-mix, which makes an
    equal-channel stereo file 3 dB louder), and cut or padded to exactly round(duration * 16000) samples.

    Args:
        path: the file's name (a path-like object works too).
        max_duration_s: longer inputs fail with ResourceExhausted.

    Returns:
        float32 [round(duration * 16000)].

    Raises:
        InvalidInput: unreadable, no audio track, or no samples.
        ResourceExhausted: longer than max_duration_s.
    """
    name = str(path)
    try:
        with open(name, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise InvalidInput(f"cannot read audio from {name}: {reason(exc)}") from exc
    codec = None
    if _looks_like_wav(head):
        codec = AudioCodec.WAV
    elif _looks_like_mp3(head) and name.lower().endswith(".mp3"):  # ADTS AAC starts like an MP3 frame too
        codec = AudioCodec.MP3
    if codec is not None:
        with open(name, "rb") as f:
            track = AudioTrack(f, codec, name=f"audio of {name}", max_duration_s=max_duration_s,
                               keep_behind_s=max_duration_s, max_ahead_s=max_duration_s)
            track.start()
            try:
                track.wait_for(1e9)
            finally:
                track.close()
        return track.read_model(0.0, track.duration_s or 0.0)

    what = f"audio of {name}"
    chunks: list[np.ndarray] = []
    source_samples, source_rate = 0, 0
    try:
        with av.open(name, metadata_errors="replace") as container:
            if not container.streams.audio:
                raise InvalidInput(f"{name} has no audio track")
            resampler: av.AudioResampler | None = None
            for frame in container.decode(container.streams.audio[0]):
                if resampler is None:
                    source_rate = frame.sample_rate
                    # As AudioTrack._decode: keep the channels through resampling, average them here.
                    resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=MODEL_SAMPLE_RATE)
                chunks += [channel_mean(o) for o in resampler.resample(frame)]
                source_samples += frame.samples
                if source_samples > max_duration_s * source_rate:
                    raise ResourceExhausted(f"{what} is longer than the limit of {max_duration_s:g} s")
            if resampler is not None:
                chunks += [channel_mean(o) for o in resampler.resample(None)]
    except LipsyncError:
        raise
    except PYAV_ERRORS as exc:
        raise InvalidInput(f"cannot read {what}: {reason(exc)}") from exc
    if source_samples == 0:
        raise InvalidInput(f"{what}: no audio samples")
    out = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    n = round(source_samples * MODEL_SAMPLE_RATE / source_rate)
    if out.size < n:
        out = np.concatenate([out, np.zeros(n - out.size, np.float32)])
    return np.ascontiguousarray(out[:n])
