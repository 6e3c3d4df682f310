"""The baseline every throughput ratio is measured against: a plain PyAV decode-and-encode.

It produces what our pipeline produces for the same inputs — the clip's frames in H.264 with the service's
encoder settings, and optionally the speech in Opus, in a fragmented MP4 — with nothing else in between.
Two details keep it comparable: the decoded frames' picture types are cleared (otherwise x264 copies the
input's I/P/B pattern instead of applying the IDR interval, which is less work than our output costs),
and the speech goes through the same decode, resample and Opus encode our output carries.
"""

from __future__ import annotations

import time
from fractions import Fraction
from pathlib import Path

import av

from lipsync_service.job import JobConfig
from lipsync_service.media.encode import encoder_options

FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def plain_decode_encode(video: Path, out: Path, speech: Path | None = None) -> tuple[int, float]:
    """Decode every frame of `video` and encode it (and `speech`, if given) into `out`.

    Returns:
        (frames, wall seconds).
    """
    start = time.perf_counter()
    frames = 0
    with av.open(str(video)) as inp, av.open(str(out), "w", format="mp4", options=FRAGMENTED) as outp:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        rate = vin.average_rate
        x264 = encoder_options(JobConfig().video_encoding, rate)
        vout = outp.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        vout.options = dict(x264.options)
        vout.codec_context.gop_size = x264.gop_size
        if x264.bit_rate:
            vout.codec_context.bit_rate = x264.bit_rate
        aout = outp.add_stream("libopus", rate=48000, layout="mono") if speech is not None else None
        for frame in inp.decode(vin):
            frame.pts, frame.time_base = frames, Fraction(1) / rate
            frame.pict_type = av.video.frame.PictureType.NONE
            outp.mux(vout.encode(frame))
            frames += 1
        outp.mux(vout.encode(None))
        if aout is not None:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
            duration = frames / rate  # our output ends with the shorter input, here the video
            with av.open(str(speech)) as ain:
                for frame in ain.decode(audio=0):
                    if frame.time is not None and frame.time >= duration:
                        break
                    for piece in resampler.resample(frame):
                        outp.mux(aout.encode(piece))
            outp.mux(aout.encode(None))
    return frames, time.perf_counter() - start
