"""Output length rules and extension frame order (docs/protocol.md#output-length)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from lipsync_service.job import ExtendAudio, ExtendVideo
from lipsync_service.media.timeline import (
    audio_frames,
    constant_rate_sources,
    extension_source_index,
    first_slot,
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


# Variable frame rate normalisation ------------------------------------------------------------------

F = Fraction


def test_constant_rate_input_maps_one_to_one():
    times = [F(i, 25) for i in range(10)]
    assert constant_rate_sources(times, F(10, 25), F(25)) == list(range(10))


def test_gaps_repeat_the_frame_before_them():
    # talking_1.mp4's pattern: frames 1/30 and 2/30 s apart, normalised to 30 fps.
    gaps = [2, 1, 1, 2, 1]
    times = [F(sum(gaps[:i]), 30) for i in range(len(gaps) + 1)]
    assert constant_rate_sources(times, times[-1] + F(1, 30), F(30)) == [0, 0, 1, 2, 3, 3, 4, 5]


def test_two_frames_in_one_slot_keep_the_later_one():
    # 60 fps input at 30 fps: slot k (centre k/30) takes the latest frame at or before k/30 + 1/60.
    times = [F(i, 60) for i in range(8)]
    assert constant_rate_sources(times, F(8, 60), F(30)) == [1, 3, 5, 7]


def test_jitter_below_half_a_frame_changes_nothing():
    # 29.97 fps timestamps rounded to milliseconds, read at 30000/1001.
    fps = F(30000, 1001)
    times = [F(round(i * 1001 / 30), 1000) for i in range(300)]
    assert constant_rate_sources(times, times[-1] + 1 / fps, fps) == list(range(300))


def test_the_last_frame_lasts_its_duration_and_is_shown_at_least_once():
    times = [F(0), F(1, 10)]
    # At 10 fps a last frame of 0.3 s fills three slots; one of 10 ms still fills its own.
    assert constant_rate_sources(times, F(4, 10), F(10)) == [0, 1, 1, 1]
    assert constant_rate_sources(times, F(11, 100), F(10)) == [0, 1]
    assert constant_rate_sources([], F(1), F(10)) == []


def test_half_a_slot_late_is_still_on_time():
    assert first_slot(F(1, 60), F(30)) == 0
    assert first_slot(F(1, 60) + F(1, 10**9), F(30)) == 1
