"""Phone alignment of `eval` (pocketsphinx): GRID clips with the transcripts their file names spell, and the
speech it must refuse to trust (silence, noise, music, another language, a transcript of other words)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipsync_service.errors import Unavailable
from lipsync_service.evaluation import load_speech
from lipsync_service.evaluation import phones as ph
from tests.training.grid import grid_transcript

RATE = 16000

def _needs_pocketsphinx() -> None:
    try:
        ph._pocketsphinx()
    except Unavailable as exc:
        pytest.skip(str(exc))


def test_grid_names_spell_their_sentences() -> None:
    assert grid_transcript("lipnet_grid_bbaf2n.mpg") == "bin blue at f two now"
    assert grid_transcript("lipnet_grid_id2_swwp2s.mpg") == "set white with p two soon"
    assert grid_transcript("lipnet_grid_lwbsza.mpg") == "lay white by s zero again"


def test_transcripts_are_normalised_and_read_from_files(tmp_path: Path) -> None:
    assert ph.transcript_words("Bin blue, at F 2 now!") == (["bin", "blue", "at", "f", "two", "now"], [])
    assert ph.transcript_words("It's well-known", ["it's", "well"]) == (["it's"], ["well-known"])
    text = tmp_path / "t.txt"
    text.write_text("lay red with p nine again\n")
    assert ph.read_transcript(str(text)) == "lay red with p nine again\n"
    assert ph.read_transcript("no such file, just words") == "no such file, just words"


def test_word_fit_compares_a_word_with_the_free_phone_loop_over_its_frames() -> None:
    loop = [(0, 9, -10.0), (10, 19, -20.0)]
    # Frames 5-14: half of each loop phone, -5 - 10 = -15 over 10 frames; the word scores -35: 2 nats worse a frame.
    assert ph.word_fit(-35.0, 5, 14, loop) == pytest.approx(-2.0)
    assert ph.word_fit(-15.0, 5, 14, loop) == pytest.approx(0.0)


@pytest.mark.parametrize("clip", ["lipnet_grid_bbaf2n.mpg", "lipnet_grid_lbax4n.mpg", "lipnet_grid_sbwe5n.mpg"])
def test_grid_clip_aligns_to_its_transcript_with_dictionary_phones_where_the_voice_is(media, clip: str) -> None:
    _needs_pocketsphinx()
    speech = load_speech(media(f"train/{clip}"))
    text = grid_transcript(clip)
    a = ph.align(speech, text)
    assert a.problem is None and a.source == "transcript" and a.text == text
    assert [w.word for w in a.words] == text.split()
    assert a.words_fit is not None and a.words_fit >= 2 / 3
    # Each word's phones are its dictionary pronunciation (one of the variants), in order, back to back.
    decoder = ph._decoder(lm=None)
    spoken = [p for p in a.phones if p.name not in ph.NOT_PHONES]
    for w in a.words:
        inside = [p.name for p in spoken if w.start <= p.start < w.end]
        variants = [decoder.lookup_word(v) for v in (w.word, f"{w.word}(2)", f"{w.word}(3)")]
        assert " ".join(inside) in [v for v in variants if v], (w.word, inside)
    assert all(a.end <= b.start + 1e-9 for a, b in zip(a.phones, a.phones[1:]))
    # The words start where the voice does (broadband level within 20 dB of its peak, 10 ms frames), +-120 ms (a
    # stop's silent closure belongs to its phone), vowels are loud and the silences quiet.
    frames = speech[: len(speech) // 160 * 160].reshape(-1, 160).astype(np.float64)
    level = 10 * np.log10((frames * frames).mean(axis=1) + 1e-12)
    onset = int(np.argmax(level > level.max() - 20)) / 100
    assert abs(a.words[0].start - onset) <= 0.12, (a.words[0].start, onset)

    def loudness(names: set[str] | frozenset[str]) -> float:
        k = [f for p in a.phones if p.name in names for f in range(round(p.start * 100), round(p.end * 100))]
        return float(np.mean(level[[f for f in k if f < len(level)]]))

    vowels = {"AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"}
    assert loudness(vowels) > loudness({"SIL"}) + 20
    assert spoken[0].start == a.words[0].start and spoken[-1].end == a.words[-1].end


def test_a_transcript_of_other_words_is_named_as_not_matching(media) -> None:
    _needs_pocketsphinx()
    speech = load_speech(media("train/lipnet_grid_bbaf2n.mpg"))
    a = ph.align(speech, grid_transcript("lipnet_grid_lbax4n.mpg"))  # "lay blue at x four now": 3 of 6 shared
    assert a.problem is not None and a.problem.startswith("the transcript does not match the speech")
    other = ph.align(speech, "the quick brown fox jumps over the lazy dog")
    assert other.problem is not None and "does not match" in other.problem
    unknown = ph.align(speech, "zxqv qqxz")
    assert unknown.problem == "the transcript has no word in the pronouncing dictionary"
    assert unknown.left_out == ["zxqv", "qqxz"] and unknown.phones == []


def _tone_chords(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) / 3
    return (0.3 * chord * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)  # on-off twice a second


@pytest.mark.slow  # recognition with the language model: about as long as the audio
def test_silence_noise_and_music_give_no_phones_and_say_why() -> None:
    _needs_pocketsphinx()
    silence = ph.align(np.zeros(3 * RATE, np.float32))
    assert silence.phones == [] and silence.problem is not None and silence.problem.startswith("silence")
    assert ph.align(np.zeros(3 * RATE, np.float32), "bin blue").problem == silence.problem
    rng = np.random.default_rng(0)
    for sound in (0.1 * rng.normal(size=3 * RATE).astype(np.float32), _tone_chords(3.0)):
        a = ph.align(sound)
        assert a.problem is not None, a.summary()
        assert a.phones == [] or a.problem.startswith("not recognised as English")


@pytest.mark.slow  # recognition with the language model: about as long as the audio
def test_another_language_is_not_taken_for_english(media) -> None:
    _needs_pocketsphinx()
    german = load_speech(media("train/mimic_german_20s.mp4"))[: 12 * RATE]
    a = ph.align(german)
    assert a.problem is not None and a.problem.startswith("not recognised as English"), a.summary()
    assert a.posterior is not None and a.posterior < ph.MIN_POSTERIOR
