"""Output length rules and the frame mapping used when the video is extended (docs/protocol.md#output-length)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from lipsync_service.job import ExtendAudio, ExtendVideo

# Seconds at the end of the video that extension repeats.
EXTENSION_TAIL_S = 5

_HALF = Fraction(1, 2)


def first_slot(offset_s: Fraction, fps: Fraction) -> int:
    """The first constant-rate output slot a frame can fill (variable frame rate normalisation).

    Output slot k is shown at k / fps and takes the latest input frame presented at or before
    k / fps + half a slot, as ffmpeg's cfr mode does: a frame fills the slots from its own
    `first_slot` up to the next frame's `first_slot` (none when both land in one slot: the earlier
    frame is dropped; several when a gap follows it: it is repeated).

    Args:
        offset_s: when the frame is presented, in seconds after the first frame (exact).
        fps: output frame rate.

    Returns:
        ceil(offset_s * fps - 1/2), the slot index.
    """
    return math.ceil(Fraction(offset_s) * Fraction(fps) - _HALF)


def constant_rate_sources(offsets_s: Sequence[Fraction], end_s: Fraction, fps: Fraction) -> list[int]:
    """Which input frame each constant-rate output slot shows (see `first_slot`).

    Args:
        offsets_s: presentation times of the input frames in seconds after the first, increasing.
        end_s: when the last frame stops being shown (its time plus its duration); the last frame fills
            at least the slot it starts in.
        fps: output frame rate.

    Returns:
        One input frame index per output slot, from slot 0 up to the slot the end falls in.
    """
    sources: list[int] = []
    if not offsets_s:
        return sources
    # The last frame is shown at least once, even when its stated duration is shorter than a slot.
    last = max(first_slot(end_s, fps), first_slot(offsets_s[-1], fps) + 1)
    bounds = [*(first_slot(t, fps) for t in offsets_s[1:]), last]
    for index, bound in enumerate(bounds):
        sources.extend([index] * max(0, bound - len(sources)))
    return sources


def audio_frames(audio_s: float, fps: Fraction | float) -> int:
    """Video frames needed to cover `audio_s` seconds of audio.

    Rounded up, except that a fraction of a frame below 1 ms is dropped: decoders report durations
    like 2.0000208 s for 2 s of audio (sample rate conversions), which must not add a frame.
    """
    exact = audio_s * float(fps)
    frames = math.ceil(exact - 1e-3 * float(fps))
    return max(frames, 0)


def output_frame_count(
    video_frames: int,
    audio_s: float,
    fps: Fraction | float,
    extend_audio: ExtendAudio,
    extend_video: ExtendVideo,
) -> int:
    """Number of frames in the output.

    Rules (docs/protocol.md#output-length):
      * video longer than audio: SILENCE keeps every video frame (speech padded with silence);
        UNSPECIFIED ends with the audio: ceil(audio_s * fps) frames, so the last frame still shows
        the end of the speech and the audio track (cut at that frame's end) is at most one frame
        longer than the speech itself.
      * audio longer than video: FORWARD/REVERSE extend the video to ceil(audio_s * fps) frames;
        UNSPECIFIED ends with the video.

    Args:
        video_frames: frames in the input video.
        audio_s: duration of the speech.
        fps: the video's frame rate.
        extend_audio: what to do when the video is longer.
        extend_video: what to do when the audio is longer.

    Returns:
        The output frame count (0 when either input is empty and nothing extends it).
    """
    needed = audio_frames(audio_s, fps)
    if video_frames <= 0:
        # Nothing to show and nothing to extend from.
        return 0
    if needed >= video_frames:
        return needed if extend_video is not ExtendVideo.UNSPECIFIED else video_frames
    return video_frames if extend_audio is ExtendAudio.SILENCE else needed


def tail_length(video_frames: int, fps: Fraction | float) -> int:
    """Frames in the tail that extension repeats: the last 5 s, or the whole video if shorter."""
    return max(1, min(video_frames, round(EXTENSION_TAIL_S * float(fps))))


def extension_source_index(k: int, video_frames: int, tail_len: int, mode: ExtendVideo) -> int:
    """Which input frame shows as extension frame k (k = 0 is the first frame after the video).

    FORWARD replays the tail in order: t0, t1, ..., tN-1, t0, t1, ...
    REVERSE ping-pongs from the last frame without showing a turning frame twice in a row:
    (the video ended on tN-1) tN-2, ..., t0, t1, ..., tN-1, tN-2, ...

    Args:
        k: extension frame number, 0-based.
        video_frames: frames in the input video (> 0).
        tail_len: frames in the tail (see `tail_length`), 1..video_frames.
        mode: FORWARD or REVERSE.

    Returns:
        The input frame index.

    Raises:
        ValueError: bad arguments or mode UNSPECIFIED (the caller never extends then).
    """
    if k < 0 or video_frames <= 0 or not 1 <= tail_len <= video_frames:
        raise ValueError(f"bad extension arguments: k={k}, video_frames={video_frames}, tail_len={tail_len}")
    start = video_frames - tail_len
    if mode is ExtendVideo.FORWARD:
        return start + k % tail_len
    if mode is ExtendVideo.REVERSE:
        if tail_len == 1:
            return start
        period = 2 * (tail_len - 1)
        # Position in the ping-pong cycle, measured backward from the last frame (offset 0).
        p = (k + 1) % period
        offset = p if p < tail_len else period - p
        return video_frames - 1 - offset
    raise ValueError(f"extension_source_index: mode {mode} does not extend the video")
