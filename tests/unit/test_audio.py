"""Audio input: WAV/MP3 of any rate and layout decode to sample-accurate mono at 16 kHz and 48 kHz."""

from __future__ import annotations

import io
import threading
import time

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipsync_service.errors import Cancelled, InputTimeout, InternalError, InvalidInput, ResourceExhausted
from lipsync_service.job import AudioCodec
from lipsync_service.media.audio import OUTPUT_SAMPLE_RATE, AudioTrack, _Samples, mix
from lipsync_service.media.pipe import ByteStream
from tests import synth

pytestmark = pytest.mark.timeout(60)


def decode(data: bytes, codec: AudioCodec = AudioCodec.WAV, **kw) -> AudioTrack:
    track = AudioTrack(io.BytesIO(data), codec, **kw)
    track.start()
    try:
        track.wait_for(1e9, timeout=30)
    finally:
        track.close()
    return track


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
@pytest.mark.parametrize("sample_format", ["s16", "s24", "s32", "flt"])
def test_wav_any_rate_and_format_decodes_in_phase_at_both_rates(tmp_path, rate, sample_format):
    seconds = 1.37
    path = synth.make_wav(tmp_path / "a.wav", seconds=seconds, rate=rate, sample_format=sample_format, freq=300)
    track = decode(path.read_bytes())

    assert track.source_rate == rate and track.source_channels == 1
    assert track.duration_s == pytest.approx(round(seconds * rate) / rate, abs=1e-9)
    model = track.read_model(0, track.duration_s)
    assert model.size == round(track.duration_s * 16000)
    output = track.read_output(0, round(track.duration_s * OUTPUT_SAMPLE_RATE) + 100)
    # Exactly round(duration * rate) samples at each rate: the padding after them is silence.
    assert np.all(output[-100:] == 0) and np.any(output[-200:-100] != 0)
    # Same phase as an ideal tone over the whole clip (no offset, no drift); edges skipped for the filter.
    for got, out_rate in ((model, 16000), (output[:-100], OUTPUT_SAMPLE_RATE)):
        ideal = synth.tone(track.duration_s, out_rate, 300)
        edge = out_rate // 50
        err = np.abs(got[edge:-edge] - ideal[edge:got.size - edge]).max()
        assert err < 0.01, (out_rate, err)


def test_stereo_is_averaged_not_summed(tmp_path):
    # synth writes channel 1 at half the level of channel 0: the mean is 0.75 of channel 0.
    path = synth.make_wav(tmp_path / "st.wav", seconds=1.0, rate=44100, channels=2, freq=500)
    track = decode(path.read_bytes())
    assert track.source_channels == 2
    level = rms(track.read_output(2400, 40000))
    assert level == pytest.approx(0.75 * 0.5 / np.sqrt(2), rel=0.02)


def test_u8_wav_and_model_view(tmp_path):
    path = synth.make_wav(tmp_path / "u8.wav", seconds=0.5, rate=8000, sample_format="u8")
    track = decode(path.read_bytes())
    view = track.model
    assert view.sample_rate == 16000
    assert view.duration_s == pytest.approx(0.5)
    np.testing.assert_array_equal(view.read(0.1, 0.3), track.read_model(0.1, 0.3))
    assert rms(view.read(0.1, 0.4)) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_reads_outside_the_track_are_silence(tmp_path):
    path = synth.make_wav(tmp_path / "a.wav", seconds=0.5, rate=16000)
    track = decode(path.read_bytes())
    before = track.read_model(-0.1, 0.1)
    assert before.size == 3200 and np.all(before[:1600] == 0) and np.any(before[1600:] != 0)
    after = track.read_output(24000 - 10, 100)
    assert after.size == 100 and np.any(after[:10] != 0) and np.all(after[10:] == 0)
    assert np.all(track.read_output(10**6, 480) == 0)


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_mp3_decodes_aligned_with_the_wav_original(tmp_path, rate):
    wav = synth.make_wav(tmp_path / "n.wav", seconds=1.0, rate=rate, kind="noise")
    mp3 = synth.make_mp3(tmp_path / "n.mp3", seconds=1.0, rate=rate, kind="noise")
    ref = decode(wav.read_bytes()).read_output(0, 48000)
    track = decode(mp3.read_bytes(), AudioCodec.MP3)
    got = track.read_output(0, 48000)
    # Encoder priming is removed: the best alignment with the original is at lag 0.
    lags = range(-1500, 1501, 1)
    scores = [float(np.dot(got[4000 + lag:40000 + lag], ref[4000:40000])) for lag in lags]
    assert list(lags)[int(np.argmax(scores))] == 0
    # MP3 may carry up to one frame (1152 samples) of encoder padding at the end.
    assert 1.0 <= track.duration_s <= 1.0 + 1152 / rate + 1e-6


def test_streamed_input_is_decoded_while_it_arrives(tmp_path):
    data = synth.make_wav(tmp_path / "a.wav", seconds=2.0, rate=44100, channels=2).read_bytes()
    stream = ByteStream(capacity=1 << 20, name="speech")
    track = AudioTrack(stream, AudioCodec.WAV)
    track.start()
    try:
        # The first half arrives in small pieces; the rest is held back until the first second is decoded.
        half = len(data) // 2
        for i in range(0, half, 1000):
            stream.write(data[i:min(i + 1000, half)])
            time.sleep(0.001)
        track.wait_for(0.9, timeout=10)
        assert track.duration_s is None and not stream.closed
        stream.write(data[half:])
        stream.close()
        track.wait_for(1e9, timeout=30)
        assert track.duration_s == pytest.approx(2.0)
    finally:
        track.close()
    whole = decode(data)
    np.testing.assert_array_equal(track.read_output(0, 96000), whole.read_output(0, 96000))


@pytest.mark.parametrize(
    ("maker", "declared", "message"),
    [
        ("mp3", AudioCodec.WAV, "speech audio: the data is not a WAV file (it looks like MP3"),
        ("wav", AudioCodec.MP3, "speech audio: the data is a WAV file but the declared codec is MP3"),
        ("garbage", AudioCodec.WAV, "speech audio: the data is not a WAV file"),
        ("garbage", AudioCodec.MP3, "speech audio: cannot read the MP3 data"),
        ("empty", AudioCodec.WAV, "speech audio: no data was received"),
        ("header_only", AudioCodec.WAV, "speech audio: the WAV data contains no audio samples"),
    ],
)
def test_bad_speech_input_is_invalid_input_naming_the_problem(tmp_path, maker, declared, message):
    if maker == "mp3":
        data = synth.make_mp3(tmp_path / "a.mp3", seconds=0.5).read_bytes()
    elif maker == "wav":
        data = synth.make_wav(tmp_path / "a.wav", seconds=0.5).read_bytes()
    elif maker == "garbage":
        data = bytes(range(256)) * 64
    elif maker == "header_only":
        data = synth.make_wav(tmp_path / "a.wav", seconds=0.0).read_bytes()
    else:
        data = b""
    with pytest.raises(InvalidInput) as err:
        decode(data, declared)
    assert str(err.value).startswith(message), str(err.value)


def test_mp3_corrupt_in_the_middle_is_invalid_input_with_the_position(tmp_path):
    data = synth.make_mp3(tmp_path / "a.mp3", seconds=2.0, rate=44100, kind="noise").read_bytes()
    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidInput, match=r"speech audio: the MP3 data is corrupt or truncated after \d+\.\d\d s"):
        decode(data[: len(data) // 3] + junk + data[len(data) // 2:], AudioCodec.MP3)


def test_truncated_input_decodes_what_arrived(tmp_path):
    data = synth.make_wav(tmp_path / "a.wav", seconds=2.0, rate=16000).read_bytes()
    header = data.index(b"data") + 8
    track = decode(data[: header + 2 * 16000])  # header + one second of s16 mono
    assert track.duration_s == pytest.approx(1.0)


@pytest.mark.parametrize("maker, codec", [(synth.make_wav, AudioCodec.WAV), (synth.make_mp3, AudioCodec.MP3)])
@pytest.mark.parametrize("name", ["speech", "background"])
def test_tags_that_are_not_text_do_not_fail_the_audio(tmp_path, maker, codec, name):
    # Found by fuzzing: a byte flipped inside the encoder tag ("Lavf..." in the RIFF INFO list or the
    # ID3 TSSE frame) made PyAV raise UnicodeDecodeError, which reached the client as INTERNAL.
    data = maker(tmp_path / "a", seconds=0.6).read_bytes()
    tag = data.index(b"Lavf")
    bad = data[:tag + 1] + b"\xd5" + data[tag + 2:]
    with pytest.raises(UnicodeDecodeError):
        av.open(io.BytesIO(bad), format=codec.value.lower()).close()
    track = decode(bad, codec, name=name)
    assert track.duration_s == pytest.approx(0.6, abs=0.03)


@pytest.mark.parametrize("name", ["speech", "background"])
def test_foreign_errors_from_pyav_become_invalid_input_naming_the_track(tmp_path, monkeypatch, name):
    data = synth.make_wav(tmp_path / "a.wav", seconds=0.3).read_bytes()

    def hostile_open(*args, **kwargs):
        raise OverflowError("value too large to convert to int")

    monkeypatch.setattr(av, "open", hostile_open)
    with pytest.raises(InvalidInput, match=rf"^{name} audio: cannot read the WAV data \(value too large"):
        decode(data, name=name)


def test_wait_before_start_is_a_bug_not_a_hang():
    with pytest.raises(InternalError, match="before start"):
        AudioTrack(io.BytesIO(b""), AudioCodec.WAV).wait_for(1.0)


def test_background_errors_name_the_background(tmp_path):
    with pytest.raises(InvalidInput, match="^background audio: "):
        decode(b"not audio at all" * 10, name="background")


def test_unsupported_input_codec_is_rejected():
    with pytest.raises(InvalidInput, match="use WAV or MP3"):
        AudioTrack(io.BytesIO(b""), AudioCodec.OPUS)


def test_longer_than_the_limit_is_resource_exhausted(tmp_path):
    data = synth.make_wav(tmp_path / "a.wav", seconds=2.0, rate=8000).read_bytes()
    with pytest.raises(ResourceExhausted, match="longer than the limit of 1 s"):
        decode(data, max_duration_s=1.0)


def test_wait_for_times_out_when_no_audio_arrives():
    stream = ByteStream(name="speech")
    track = AudioTrack(stream, AudioCodec.WAV)
    track.start()
    try:
        with pytest.raises(InputTimeout, match="speech audio: no audio up to 1.00 s"):
            track.wait_for(1.0, timeout=0.2)
    finally:
        track.close()


def test_close_stops_a_decoder_blocked_on_its_stream_and_is_idempotent(tmp_path):
    data = synth.make_wav(tmp_path / "a.wav", seconds=1.0).read_bytes()
    stream = ByteStream(name="speech")
    stream.write(data[:2000])  # header and a little audio; the rest never comes
    track = AudioTrack(stream, AudioCodec.WAV)
    track.start()
    time.sleep(0.1)
    started = time.monotonic()
    track.close()
    track.close()
    assert time.monotonic() - started < 5
    assert not track._thread.is_alive()
    with pytest.raises(Cancelled):
        track.wait_for(0.9)


def test_consumed_audio_is_released_and_rereading_it_is_an_error(tmp_path):
    data = synth.make_wav(tmp_path / "a.wav", seconds=3.0, rate=48000).read_bytes()
    track = decode(data, keep_behind_s=0.5)
    assert np.any(track.read_output(2 * 48000, 4800) != 0)
    with pytest.raises(InternalError, match="already released"):
        track.read_output(0, 4800)
    # Within keep_behind_s of the latest read is still there.
    assert np.any(track.read_output(int(1.6 * 48000), 480) != 0)


def test_the_decoder_pauses_ahead_of_the_reader_and_the_rest_stays_compressed(tmp_path):
    """Speech sent far ahead of the video is not all decoded at once: decoded float samples at two rates take
    8 times the room of 16 kHz WAV (and the call's memory budget counts what stays compressed)."""
    data = synth.make_wav(tmp_path / "a.wav", seconds=20.0).read_bytes()
    stream = ByteStream(len(data) + 1, name="speech audio")
    stream.write(data)
    stream.close()
    track = AudioTrack(stream, AudioCodec.WAV, max_ahead_s=2.0, keep_behind_s=1.0)
    track.start()
    try:
        track.wait_for(1.0, timeout=10)
        time.sleep(0.3)  # the decoder had time to run far ahead, if it would
        held = track.held_bytes
        assert held <= 4 * (16000 + OUTPUT_SAMPLE_RATE) * 3.5, held  # about 3 s decoded, not 20
        assert stream.buffered > len(data) // 2  # the rest waits in its compressed form
        track.wait_for(15.0, timeout=10)  # reading on lets it go on
        assert track.read_model(14.0, 15.0).size == 16000
        assert track.read_output(14 * OUTPUT_SAMPLE_RATE, OUTPUT_SAMPLE_RATE).size == OUTPUT_SAMPLE_RATE
        assert track.held_bytes <= 4 * (16000 + OUTPUT_SAMPLE_RATE) * 4.5  # 1 s behind, 1 read, 2 ahead
        track.wait_for(1e9, timeout=10)
        assert track.duration_s == pytest.approx(20.0)
    finally:
        track.close()


def test_mix_adds_background_at_volume_and_clips():
    speech = np.full(100, 0.5, np.float32)
    background = np.full(80, 0.8, np.float32)
    out = mix(speech, background, 0.25)
    assert out.dtype == np.float32 and out.size == 100
    np.testing.assert_allclose(out[:80], 0.7)
    np.testing.assert_allclose(out[80:], 0.5)
    assert mix(speech, background, 1.0).max() == 1.0
    np.testing.assert_array_equal(mix(speech, background, 0.0), speech)


@pytest.mark.parametrize("name", ["speech_en_1.wav", "speech_48k_28s.wav"])
def test_real_speech_streamed_in_64k_chunks_matches_the_file(media, name):
    path = media(name)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        expected = float(stream.duration * stream.time_base)
    data = path.read_bytes()
    pipe = ByteStream(name="speech")
    track = AudioTrack(pipe, AudioCodec.WAV)
    track.start()

    def feed() -> None:
        # As the reference client sends it: 64 KiB chunks.
        for i in range(0, len(data), 65536):
            pipe.wait_space(timeout=10)
            pipe.write(data[i:i + 65536])
        pipe.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        track.wait_for(1e9, timeout=60)
    finally:
        feeder.join()
        track.close()
    assert track.duration_s == pytest.approx(expected, abs=1e-6)
    n = round(expected * 16000)
    model = track.read_model(0, expected)
    assert model.size == n and rms(model) > 0.01
    np.testing.assert_array_equal(model, decode(data).read_model(0, expected))


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30),
       reads=st.lists(st.tuples(st.integers(-20, 400), st.integers(0, 120)), min_size=1, max_size=10),
       keep=st.integers(0, 100))
def test_sample_store_reads_match_one_flat_array(sizes, reads, keep):
    # The chunked store behind read_output/read_model: any window over any chunking equals slicing
    # one flat array (zeros outside), and forward reads never hit released samples.
    store = _Samples(1000)
    flat = np.arange(1, sum(sizes) + 1, dtype=np.float32)
    pos = 0
    for size in sizes:
        store.append(flat[pos:pos + size])
        pos += size
    padded = np.concatenate([np.zeros(20, np.float32), flat, np.zeros(600, np.float32)])
    for start, count in sorted(reads):
        store.release_before(start - keep)
        np.testing.assert_array_equal(store.read(start, count), padded[start + 20:start + 20 + count])


def test_load_speech_file_hears_equal_stereo_as_serving_and_as_mono(tmp_path):
    # Training and eval load files with load_speech_file; a stereo file with equal channels must come out
    # at the level serving's AudioTrack gives it and its mono equivalent has (FFmpeg's own down-mix adds 3 dB).
    from lipsync_service.media.audio import load_speech_file

    mono = synth.tone(1.5, 44100, 440.0, amplitude=0.4)
    stereo_path = synth._write_audio(tmp_path / "st.wav", "wav", "pcm_s16le", np.stack([mono, mono]), 44100)
    mono_path = synth._write_audio(tmp_path / "mono.wav", "wav", "pcm_s16le", mono[None], 44100)
    # The same stereo audio in a container serving never gets (a video's own track): the same recipe.
    mkv_path = synth._write_audio(tmp_path / "st.mkv", "matroska", "pcm_s16le", np.stack([mono, mono]), 44100)

    served = decode(stereo_path.read_bytes())
    served_model = served.read_model(0, served.duration_s)
    loaded = load_speech_file(str(stereo_path))
    assert served.source_channels == 2 and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, served_model)
    for other in (load_speech_file(str(mono_path)), load_speech_file(str(mkv_path))):
        assert other.size == loaded.size == round(1.5 * 16000)
        assert rms(other) == pytest.approx(rms(loaded), rel=1e-3)
    assert rms(loaded) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def test_load_speech_file_rejects_files_without_audio(tmp_path):
    from lipsync_service.media.audio import load_speech_file

    with pytest.raises(InvalidInput, match="no audio track"):
        load_speech_file(str(synth.make_video(tmp_path / "v.mp4", seconds=0.5)))
    with pytest.raises(InvalidInput):
        load_speech_file(str(tmp_path / "missing.wav"))


@pytest.mark.parametrize("channels", [8, 9, 16])
def test_a_wav_claiming_many_channels_is_read_not_a_crash(tmp_path, channels) -> None:
    # PyAV reads the planes of a planar frame with 8 or more channels out of bounds; a fuzzed WAV header claiming
    # 8 channels killed the server. The decoder resamples to packed samples instead.
    import struct

    from lipsync_service.media.audio import load_speech_file
    from tests import synth

    data = bytearray(synth.make_wav(tmp_path / "a.wav", seconds=1.0, kind="tone").read_bytes())
    struct.pack_into("<H", data, data.index(b"fmt ") + 10, channels)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(bytes(data))
    samples = load_speech_file(str(bad))
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.size > 0 and np.isfinite(samples).all()
