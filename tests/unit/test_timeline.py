"""Output length rules and extension frame order (SPEC section 3)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lipsync_service.config import ExtendAudio, ExtendVideo
from lipsync_service.media.timeline import (
    audio_frames,
    extension_source_index,
    output_frame_count,
    tail_length,
)

U_A, SIL = ExtendAudio.UNSPECIFIED, ExtendAudio.SILENCE
U_V, FWD, REV = ExtendVideo.UNSPECIFIED, ExtendVideo.FORWARD, ExtendVideo.REVERSE


@pytest.mark.parametrize(
    ("video_frames", "audio_s", "extend_audio", "extend_video", "expected"),
    [
        # Audio shorter than the 50-frame video.
        (50, 1.0, U_A, U_V, 25),
        (50, 1.0, SIL, U_V, 50),
        (50, 1.0, U_A, FWD, 25),
        (50, 1.0, SIL, REV, 50),
        # A partial frame of speech still gets its frame (ceil).
        (50, 1.01, U_A, U_V, 26),
        # Audio longer than the video.
        (50, 3.0, U_A, U_V, 50),
        (50, 3.0, SIL, U_V, 50),
        (50, 3.0, U_A, FWD, 75),
        (50, 3.0, SIL, REV, 75),
        (50, 3.01, U_A, FWD, 76),
        # Equal lengths.
        (50, 2.0, U_A, U_V, 50),
        (50, 2.0, SIL, FWD, 50),
        # Empty inputs.
        (0, 2.0, U_A, FWD, 0),
        (50, 0.0, U_A, U_V, 0),
        (50, 0.0, SIL, U_V, 50),
    ],
)
def test_output_frame_count(video_frames, audio_s, extend_audio, extend_video, expected):
    assert output_frame_count(video_frames, audio_s, 25, extend_audio, extend_video) == expected


def test_decoder_rounding_does_not_add_a_frame():
    # 2 s of speech resampled often reports a few samples more.
    assert audio_frames(2.0 + 20 / 48000, Fraction(25)) == 50
    assert audio_frames(2.0 + 0.002, Fraction(25)) == 51


def test_output_and_audio_agree_within_one_frame():
    fps = Fraction(30000, 1001)
    for audio_s in (0.5, 1.234, 2.0, 3.3367, 7.0):
        n = output_frame_count(10_000, audio_s, fps, U_A, U_V)
        assert abs(n / float(fps) - audio_s) <= 1 / float(fps)


def test_tail_is_last_five_seconds_or_whole_video():
    assert tail_length(1000, 25) == 125
    assert tail_length(40, 25) == 40
    assert tail_length(1000, Fraction(30000, 1001)) == 150


def test_forward_repeats_the_tail_in_order():
    seq = [extension_source_index(k, 10, 4, FWD) for k in range(10)]
    assert seq == [6, 7, 8, 9, 6, 7, 8, 9, 6, 7]


def test_reverse_ping_pongs_without_doubling_the_turning_frame():
    # The video itself ended on frame 9.
    seq = [extension_source_index(k, 10, 4, REV) for k in range(12)]
    assert seq == [8, 7, 6, 7, 8, 9, 8, 7, 6, 7, 8, 9]
    full = [9] + seq
    assert all(a != b for a, b in zip(full, full[1:]))


def test_reverse_over_the_whole_short_video():
    seq = [extension_source_index(k, 3, 3, REV) for k in range(6)]
    assert seq == [1, 0, 1, 2, 1, 0]


def test_single_frame_tail_repeats_the_last_frame():
    assert [extension_source_index(k, 5, 1, REV) for k in range(3)] == [4, 4, 4]
    assert [extension_source_index(k, 5, 1, FWD) for k in range(3)] == [4, 4, 4]


def test_unspecified_mode_does_not_extend():
    with pytest.raises(ValueError):
        extension_source_index(0, 10, 4, U_V)
