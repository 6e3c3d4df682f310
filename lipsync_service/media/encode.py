"""Output: encode frames (H.264) and mono audio (Opus or MP3) into a fragmented MP4 streamed to a sink."""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from typing import Any, Literal, NamedTuple, overload

import av
import numpy as np

from lipsync_service.errors import InternalError, InvalidInput, LipsyncError
from lipsync_service.job import (
    DEFAULT_IDR_INTERVAL,
    NV_DEFAULT_BITRATE,
    NV_VBR_PEAK_FACTOR,
    AudioCodec,
    ControlRate,
    CustomEncoding,
    EncodingMode,
    VideoEncodingSpec,
)
from lipsync_service.media.audio import OUTPUT_SAMPLE_RATE
from lipsync_service.media.types import VideoInfo

log = logging.getLogger(__name__)

# Fragmented MP4 so bytes can leave before the end (one fragment per GOP). delay_moov writes the moov
# once the first fragment is known, which lets it carry edit lists: without them the B-frame reorder
# delay and the audio encoder's priming would shift every timestamp (video would start at 2 frames).
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+delay_moov"

#: x264 preset used unless a custom encoding names one: fast enough for the hot path on CPU.
DEFAULT_PRESET = "veryfast"

# Encoder, sample format it takes, and bitrate: enough for speech mixed with background music in mono
# (the encoders' own defaults, 64 kbit/s Opus, are tuned for speech alone).
_AUDIO_ENCODERS: dict[AudioCodec, tuple[Literal["libopus", "libmp3lame"], str, int]] = {
    AudioCodec.OPUS: ("libopus", "flt", 96_000), AudioCodec.MP3: ("libmp3lame", "fltp", 128_000)}
# LAME's CBR/ABR presets scale the input by 0.95 below 320 kbit/s (the `scale` column of its abr_switch_map, headroom
# against clipping), so 128 kbit/s MP3 decodes 5 % (0.45 dB) quieter than the speech we were given. FFmpeg exposes no
# way to set LAME's scale; we hand it float samples, which LAME scales without clipping, so the inverse gain applied
# before encoding gives back the input's level exactly. Opus has no such gain.
_INPUT_GAIN: dict[AudioCodec, float] = {AudioCodec.MP3: 1 / 0.95}


class X264Settings(NamedTuple):
    """libx264 settings derived from a VideoEncodingSpec.

    Attributes:
        options: AVOptions for the libx264 encoder (private options and "x264-params").
        bit_rate: average bitrate in bit/s, or None for quality/quantizer modes.
        gop_size: frames between IDR frames.
    """

    options: dict[str, str]
    bit_rate: int | None
    gop_size: int


def _gop_params(gop: int, bframes: int | None = None) -> str:
    # keyint == min-keyint and no scene-cut keyframes: an IDR exactly every `gop` frames and nowhere
    # else; closed GOPs so every fragment decodes on its own.
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0"
    if bframes is not None:
        params += f":bframes={bframes}"
    return params


def encoder_options(encoding: VideoEncodingSpec, fps: Fraction | float) -> X264Settings:
    """Map our encoding spec to libx264 settings.

    The spec has passed config validation (`lipsync_service.config`), which refuses every combination
    x264 would reject, so this only maps values.

    Mapping:
        lossless: qp=0 (x264's lossless mode; yuv420p in, identical planes out), preset veryfast,
            an IDR every second (round(fps) frames: lossless frames are large, so a long GOP saves size).
        lossy: bit_rate = bitrate_mbps * 1e6 (average, ABR), maxrate = bufsize = that bitrate (a one-second
            VBV buffer, so no stretch of the stream runs far above the requested rate), an IDR every
            idr_interval frames, preset veryfast, profile high.
        custom (the fields of job.CustomEncoding; unset ones fall back as noted):
            preset -> x264 preset (default veryfast); tune -> x264 tune; profile -> H.264 profile (the NVIDIA
            plugin's numbers 0/2/4/7 -> baseline/main/high/high444); crf -> constant rate factor; qp ->
            constant quantizer (0 = lossless); bframes -> maximum consecutive B-frames.
            Rate: the target is bitrate_mbps or NVIDIA's bitrate (bit/s), the peak max_bitrate_mbps or
            NVIDIA's maxbitrate. crf or qp take precedence over a target (x264 uses one rate-control mode; with
            a peak, crf becomes capped CRF). NVIDIA's control-rate picks the mode, as the plugin does:
            1 (CBR; also the plugin's default when its `bitrate` is given without control-rate): average =
            VBV maxrate = bufsize = target; 0 (VBR): average = target, maxrate = bufsize = the peak (at least
            the target; 1.2 x target when no peak is given); 2 (constant QP): qp. A control-rate without a
            target uses the plugin's default, 4 Mbit/s. Without control-rate: average = target (ABR) and,
            given a peak, maxrate = bufsize = peak (a one-second VBV buffer).
            IDR spacing: idr_interval or NVIDIA's idrinterval; NVIDIA's iframeinterval also bounds it (the
            smaller wins): every GOP is closed, so each I-frame x264 writes here is an IDR frame. Default 8.
            preset-id and tuning-info-id are NVENC-only hints with no x264 meaning (job.CustomEncoding).

    Args:
        encoding: the validated spec from the job config.
        fps: output frame rate.

    Returns:
        X264Settings(options, bit_rate, gop_size).
    """
    if encoding.mode is EncodingMode.LOSSLESS:
        gop = max(1, int(round(float(fps))))
        return X264Settings({"preset": DEFAULT_PRESET, "qp": "0", "x264-params": _gop_params(gop)}, None, gop)
    if encoding.mode is EncodingMode.LOSSY:
        rate = int(round(encoding.bitrate_mbps * 1_000_000))
        gop = int(encoding.idr_interval)
        options = {"preset": DEFAULT_PRESET, "profile": "high", "maxrate": str(rate), "bufsize": str(rate),
                   "x264-params": _gop_params(gop)}
        return X264Settings(options, rate, gop)
    return _custom_options(encoding.custom)


def _custom_options(custom: CustomEncoding) -> X264Settings:
    idr = custom.idr_interval if custom.idr_interval is not None else custom.idrinterval
    gops = [int(n) for n in (idr, custom.iframeinterval) if n is not None]
    gop = min(gops) if gops else DEFAULT_IDR_INTERVAL
    options = {"preset": (custom.preset or DEFAULT_PRESET).lower()}
    if custom.tune is not None:
        options["tune"] = custom.tune.lower()
    if custom.x264_profile is not None:
        options["profile"] = custom.x264_profile
    if custom.crf is not None:
        options["crf"] = f"{float(custom.crf):g}"
    if custom.qp is not None:
        options["qp"] = str(int(custom.qp))
    target = peak = None
    if custom.bitrate_mbps is not None:
        target = int(round(float(custom.bitrate_mbps) * 1_000_000))
    elif custom.bitrate is not None:
        target = int(custom.bitrate)
    if custom.max_bitrate_mbps is not None:
        peak = int(round(float(custom.max_bitrate_mbps) * 1_000_000))
    elif custom.maxbitrate is not None:
        peak = int(custom.maxbitrate)
    mode = custom.control_rate
    if mode is None and custom.bitrate is not None and custom.crf is None and custom.qp is None:
        mode = ControlRate.CBR  # the plugin's default rate control
    bit_rate = target
    if mode == ControlRate.CBR:
        bit_rate = target or NV_DEFAULT_BITRATE
        peak = bit_rate
    elif mode == ControlRate.VBR:
        bit_rate = target or NV_DEFAULT_BITRATE
        peak = max(peak if peak is not None else int(round(bit_rate * NV_VBR_PEAK_FACTOR)), bit_rate)
    elif mode == ControlRate.CONSTANT_QP:
        bit_rate = None  # validation: qp given, no rates
    if peak is not None:
        options["maxrate"] = str(peak)
        options["bufsize"] = str(peak)
    options["x264-params"] = _gop_params(gop, None if custom.bframes is None else int(custom.bframes))
    return X264Settings(options, bit_rate, gop)


class _SinkFile:
    """Write-only, non-seekable file-like for PyAV that forwards every write to the sink."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self.sink: Callable[[bytes], object] | None = sink
        self.error: BaseException | None = None
        self.bytes_written = 0

    def write(self, data: bytes) -> int:
        if self.sink is not None and data:
            try:
                self.sink(bytes(data))
            except BaseException as exc:  # kept so the writer re-raises the sink's own error (e.g. Cancelled)
                self.error = exc
                raise
            self.bytes_written += len(data)
        return len(data)


class OutputWriter:
    """Encodes frames (H.264) and audio (Opus or MP3) into one fragmented MP4, handing bytes to `sink` as
    soon as the muxer produces them (so streaming output flows early).

    Video frame `index` has pts index / fps; audio pts count samples from 0. The caller interleaves
    `write_frame` and `write_audio` (audio up to each frame's end) so fragments carry both.
    """

    def __init__(self, sink: Callable[[bytes], object], video: VideoInfo, encoding: VideoEncodingSpec,
                 audio_codec: AudioCodec, *, audio_rate: int = OUTPUT_SAMPLE_RATE, threads: int = 0) -> None:
        """Open the encoders and the muxer (nothing is written until the first packets).

        Args:
            sink: receives the MP4 bytes in order; may raise (e.g. Cancelled) to stop the job.
            video: input stream facts; the output keeps its size and frame rate.
            encoding: the H.264 settings (see `encoder_options`).
            audio_codec: AudioCodec.OPUS or AudioCodec.MP3.
            audio_rate: sample rate of the samples given to `write_audio` (Opus needs 48000).
            threads: x264 threads; 0 lets x264 choose from the CPU count.

        Raises:
            InvalidInput: odd frame size (a property of the input video, known only now).
            InternalError: the encoders could not be set up, which for a validated config is our fault.
        """
        if video.width % 2 or video.height % 2:
            raise InvalidInput(
                f"video: frame size {video.width}x{video.height} has an odd side; H.264 4:2:0 output needs an "
                "even width and height: crop or scale the input by one pixel (e.g. ffmpeg -vf crop=trunc(iw/2)*2:"
                "trunc(ih/2)*2)"
            )
        if audio_codec not in _AUDIO_ENCODERS:
            # Config validation only lets OPUS and MP3 through: anything else is a caller's bug.
            raise InternalError(f"output: audio codec {audio_codec.value} has no encoder (OPUS or MP3 expected)")
        self._fps = Fraction(video.fps)
        self._time_base = 1 / self._fps
        self._audio_rate = audio_rate
        self._frames = 0
        self._audio_in = 0  # samples given to write_audio
        self._audio_pts = 0  # samples handed to the encoder (includes the padded last frame)
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._closed = False
        self._file = _SinkFile(sink)
        self.settings = encoder_options(encoding, self._fps)
        try:
            self._container = av.open(self._file, mode="w", format="mp4", options={"movflags": MOVFLAGS})
        except av.error.FFmpegError as exc:
            raise InternalError(f"output: cannot create the MP4 muxer ({exc})") from exc
        try:
            self._video = self._container.add_stream("libx264", rate=self._fps)
            ctx = self._video.codec_context
            ctx.width, ctx.height, ctx.pix_fmt = video.width, video.height, "yuv420p"
            ctx.time_base = self._time_base
            ctx.gop_size = self.settings.gop_size
            ctx.thread_count = max(0, int(threads))
            if self.settings.bit_rate is not None:
                ctx.bit_rate = self.settings.bit_rate
            ctx.options = dict(self.settings.options)
            ctx.open()
        except av.error.FFmpegError as exc:
            self.abort()
            # Config validation refuses every combination x264 rejects, so a refusal here is our bug, not the
            # client's; the options are named so it can be reproduced.
            raise InternalError(
                f"output: cannot open the H.264 encoder with the options {self.settings.options} ({exc})"
            ) from exc
        name, sample_fmt, audio_bit_rate = _AUDIO_ENCODERS[audio_codec]
        try:
            self._audio = self._container.add_stream(name, rate=audio_rate, layout="mono")
            actx = self._audio.codec_context
            actx.format = sample_fmt
            actx.time_base = Fraction(1, audio_rate)
            actx.bit_rate = audio_bit_rate
            actx.open()
        except (av.error.FFmpegError, ValueError) as exc:
            self.abort()
            # The codec was validated and the rate is ours (the pipeline's output rate): not the client's fault.
            raise InternalError(f"output audio: cannot encode {audio_codec.value} at {audio_rate} Hz ({exc})") from exc
        self._sample_fmt = sample_fmt
        self._gain = _INPUT_GAIN.get(audio_codec, 1.0)
        self._frame_size = self._audio.codec_context.frame_size or 1024
        self._audio_time_base = Fraction(1, audio_rate)

    # Video -----------------------------------------------------------------------------------

    def write_frame(self, frame: av.VideoFrame, index: int) -> None:
        """Encode output frame `index` (0, 1, 2, ... in order) with pts index / fps.

        Args:
            frame: the picture, yuv420p at the stream's size (other formats are converted).
            index: output frame number; must equal `frames_written`.

        Raises:
            InternalError: frames out of order, wrong size, or an encoder/muxer failure.
            LipsyncError: whatever the sink raised (e.g. Cancelled).
        """
        if index != self._frames:
            raise InternalError(f"output: frame {index} written when frame {self._frames} was expected")
        if self._closed:
            raise InternalError("output: write after close")
        ctx = self._video.codec_context
        if frame.width != ctx.width or frame.height != ctx.height:
            raise InternalError(
                f"output: frame {index} is {frame.width}x{frame.height}, the stream is {ctx.width}x{ctx.height}"
            )
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        frame.pts = index
        frame.time_base = self._time_base
        # Decoded frames carry the input's picture type (I/P/B); libx264 would obey it and copy the
        # input's GOP structure instead of ours.
        frame.pict_type = av.video.frame.PictureType.NONE
        self._mux(self._video, frame)
        self._frames += 1

    # Audio -----------------------------------------------------------------------------------

    def write_audio(self, samples: np.ndarray) -> None:
        """Append float32 mono samples at audio_rate, in order; encoded in whole encoder frames.

        Raises:
            InternalError: an encoder/muxer failure.
            LipsyncError: whatever the sink raised (e.g. Cancelled).
        """
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not samples.size:
            return
        self._audio_in += samples.size
        self._pending.append(samples)
        self._pending_len += samples.size
        if self._pending_len < self._frame_size:
            return
        data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        whole = data.size - data.size % self._frame_size
        for start in range(0, whole, self._frame_size):
            self._encode_audio(data[start:start + self._frame_size])
        rest = data[whole:]
        self._pending = [rest] if rest.size else []
        self._pending_len = rest.size

    def _encode_audio(self, chunk: np.ndarray) -> None:
        if self._gain != 1.0:
            chunk = chunk * np.float32(self._gain)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk).reshape(1, -1), format=self._sample_fmt,
                                           layout="mono")
        frame.sample_rate = self._audio_rate
        frame.pts = self._audio_pts
        frame.time_base = self._audio_time_base
        self._audio_pts += chunk.size
        self._mux(self._audio, frame)

    # Common ----------------------------------------------------------------------------------

    @overload
    def _mux(self, stream: av.VideoStream, frame: av.VideoFrame | None) -> None: ...
    @overload
    def _mux(self, stream: av.AudioStream, frame: av.AudioFrame | None) -> None: ...

    def _mux(self, stream: av.VideoStream | av.AudioStream, frame: Any) -> None:
        if self._closed:
            raise InternalError("output: write after close")
        try:
            for packet in stream.encode(frame):
                self._container.mux(packet)
        except LipsyncError:
            raise
        except Exception as exc:
            if isinstance(self._file.error, LipsyncError):
                raise self._file.error from exc
            what = "video" if stream is self._video else "audio"
            raise InternalError(f"output: {what} encoding failed at frame {self._frames} ({exc})") from exc

    def close(self) -> None:
        """Flush encoders and muxer so every byte reaches the sink.

        Raises:
            InternalError: flushing failed (the output is then incomplete: do not present it as success).
            LipsyncError: whatever the sink raised.
        """
        if self._closed:
            return
        try:
            if self._pending_len:
                tail = np.zeros(self._frame_size, np.float32)
                tail[: self._pending_len] = np.concatenate(self._pending)
                self._pending, self._pending_len = [], 0
                self._encode_audio(tail)
            self._mux(self._video, None)
            self._mux(self._audio, None)
            try:
                self._container.close()
            except LipsyncError:
                raise
            except Exception as exc:
                if isinstance(self._file.error, LipsyncError):
                    raise self._file.error from exc
                raise InternalError(f"output: finishing the MP4 failed ({exc})") from exc
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._release()

    def abort(self) -> None:
        """Release encoders and muxer without finishing the file; nothing more reaches the sink. Never raises."""
        self._closed = True
        self._file.sink = None
        container = getattr(self, "_container", None)
        if container is None:
            return
        try:
            container.close()
        except Exception:  # the output is being thrown away; a failing trailer is expected here
            log.debug("output: closing an aborted MP4 raised", exc_info=True)
        self._release()

    def _release(self) -> None:
        """Drop the streams: each owns its encoder (x264's threads and look-ahead frames), which a closed container
        does not free, and a failed job's traceback may keep this writer alive until the garbage collector runs."""
        for name in ("_video", "_audio", "_container"):
            self.__dict__.pop(name, None)

    @property
    def frames_written(self) -> int:
        """Video frames given to the encoder so far."""
        return self._frames

    @property
    def audio_samples_written(self) -> int:
        """Audio samples given to `write_audio` so far (without the padding of the last encoder frame)."""
        return self._audio_in

    @property
    def bytes_written(self) -> int:
        """Bytes handed to the sink so far."""
        return self._file.bytes_written
