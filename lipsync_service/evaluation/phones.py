"""Phones of the speech, with their times: pocketsphinx's US-English models, aligned to a transcript.

With a transcript, the words are aligned to the audio (`set_align_text`), then a second pass gives each word's
phones (`set_alignment`, `get_alignment`), at pocketsphinx's 10 ms frames. Without one, the audio is first
recognised with the bundled language model and the recognised words are aligned the same way: rough on short
or unusual speech (GRID's "bin blue at f two now" comes out as "didn't have to know"), good on clean read
speech.

Two checks say when the phones cannot be trusted, and why:

* fit of the words: every aligned word's acoustic log-likelihood per 10 ms frame is compared with what a free
  phone loop (the bundled phone language model) reaches over the same frames. A word fits when it is at most
  `FIT_NATS_PER_FRAME` worse. With a transcript, fewer than `MIN_WORDS_FIT` of its words fitting means the
  transcript does not match the audio (on the 11 GRID clips: every true transcript 0.67-1.0 of its words,
  every other clip's transcript 0.0-0.4, or no alignment at all).
* recognition: without a transcript, a mean word posterior under `MIN_POSTERIOR` means the speech was not
  recognised as English (English clips here 0.34-0.81, French and German speech 0.27-0.28); music, noise and
  silence give no words at all.

pocketsphinx is an optional dependency (`pip install 'lipsync-service[eval]'`): the service never imports this
module, and `eval` without it reports the phone measures as not measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lipsync_service.errors import Unavailable
from lipsync_service.media.types import MODEL_SAMPLE_RATE

#: pocketsphinx's feature frames per second (10 ms frames).
PHONE_RATE = 100
#: A word fits the audio when its log-likelihood per frame is at most this much under the free phone loop's.
FIT_NATS_PER_FRAME = 2.0
#: With a transcript, at least this share of its words must fit, or the transcript does not match the audio.
MIN_WORDS_FIT = 0.5
#: Without a transcript, the recognised words' mean posterior must reach this for the speech to count as English.
MIN_POSTERIOR = 0.3
#: Speech whose 95th percentile of 10 ms loudness is under this (dBFS) is silence: nothing to align.
SILENCE_DBFS = -50.0
#: Units that are not phones: silence and pocketsphinx's noise fillers.
NOT_PHONES = frozenset({"SIL", "+NSN+", "+SPN+", "+BREATH+", "+COUGH+", "+LAUGH+", "+UM+", "+UH+", "+SMACK+"})


@dataclass(frozen=True)
class Phone:
    """One phone of the speech.

    Attributes:
        name: ARPAbet symbol as in the CMU dictionary, without stress ("P", "AE"); "SIL" for silence.
        start: start in seconds from the start of the speech.
        end: end in seconds.
        word: the word it belongs to ("<sil>" for silence).
    """

    name: str
    start: float
    end: float
    word: str


@dataclass(frozen=True)
class Word:
    """One aligned word and how well it fits the audio.

    Attributes:
        word: the word as aligned (dictionary spelling, without the pronunciation variant).
        start: start in seconds.
        end: end in seconds.
        fit: its log-likelihood per 10 ms frame minus the free phone loop's over the same frames (nats; 0 or a
            little under for a word that is there, several nats under for one that is not).
    """

    word: str
    start: float
    end: float
    fit: float


@dataclass
class PhoneAlignment:
    """The phones of a speech track, or why there are none to trust.

    Attributes:
        source: "transcript" (aligned to a given text) or "recognised" (aligned to pocketsphinx's own words).
        text: the words aligned (the transcript as normalised, or the recognised words).
        phones: the phones in time order, silences included (empty when alignment failed).
        words: the aligned words with their fit.
        words_fit: share of the words that fit the audio (None: no words).
        posterior: mean posterior of the recognised words (None with a transcript).
        left_out: transcript words missing from the dictionary, left out of the alignment.
        problem: why the phones cannot be used (None: usable).
    """

    source: str
    text: str
    phones: list[Phone] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    words_fit: float | None = None
    posterior: float | None = None
    left_out: list[str] = field(default_factory=list)
    problem: str | None = None

    def summary(self) -> dict:
        """The alignment without its segments, for scores.json."""
        return {"source": self.source, "text": self.text, "words": len(self.words),
                "phones": sum(p.name not in NOT_PHONES for p in self.phones), "words_fit": self.words_fit,
                "posterior": self.posterior, "left_out": self.left_out, "problem": self.problem}

    def segments(self) -> dict:
        """Words and phones with their times, for phones.json."""
        return {"words": [[w.word, round(w.start, 2), round(w.end, 2), round(w.fit, 2)] for w in self.words],
                "phones": [[p.name, round(p.start, 2), round(p.end, 2), p.word] for p in self.phones]}


def _pocketsphinx() -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise Unavailable("pocketsphinx is not installed: pip install 'lipsync-service[eval]'") from exc
    return pocketsphinx


def _decoder(**config: Any) -> Any:
    """A fresh decoder (one that failed an alignment cannot be reused), quiet, on the bundled models."""
    return _pocketsphinx().Decoder(loglevel="FATAL", **config)


def _decode(decoder: Any, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


def _pcm(speech: np.ndarray) -> bytes:
    return (np.clip(np.asarray(speech, np.float64), -1, 1) * 32767).astype("<i2").tobytes()


def _base(word: str) -> str:
    """A dictionary entry without its pronunciation variant: "to(3)" -> "to"."""
    return word.split("(", 1)[0]


def _is_word(word: str) -> bool:
    return not (word.startswith("<") or word.startswith("[") or word.startswith("+"))


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def read_transcript(value: str) -> str:
    """The transcript text: the file's contents when `value` names a file, else `value` itself."""
    path = Path(value)
    try:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except OSError:  # a long text is not a path the OS can look at
        pass
    return value


DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def transcript_words(text: str, in_dictionary: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """Words of a transcript as the dictionary spells them.

    Lower-cased; punctuation other than in-word apostrophes and hyphens split words; a lone digit is spelled out.

    Args:
        text: the transcript.
        in_dictionary: the words the dictionary holds (None: keep every word).

    Returns:
        (the words to align, the words left out because the dictionary lacks them).
    """
    tokens = re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())
    words = [DIGIT_WORDS[int(t)] if t.isdigit() and len(t) == 1 else t for t in tokens]
    if in_dictionary is None:
        return words, []
    known = set(in_dictionary)
    return [w for w in words if w in known], [w for w in words if w not in known]


def _dictionary_lookup(decoder: Any, words: Sequence[str]) -> list[str]:
    return [w for w in words if decoder.lookup_word(w) is not None]


def _silent(speech: np.ndarray, rate: int) -> bool:
    hop = rate // PHONE_RATE
    n = len(speech) // hop
    if n == 0:
        return True
    frames = np.asarray(speech[: n * hop], np.float64).reshape(n, hop)
    db = 10 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)
    return float(np.percentile(db, 95)) < SILENCE_DBFS


def _recognise(pcm: bytes) -> tuple[list[str], float | None]:
    """pocketsphinx's own words for the audio (fillers left out) and their mean posterior."""
    decoder = _decoder()
    _decode(decoder, pcm)
    segs = [s for s in decoder.seg() if _is_word(s.word)]
    words = [_base(s.word) for s in segs]
    return words, (float(np.mean([s.prob for s in segs])) if segs else None)


def _free_loop(pcm: bytes) -> list[tuple[int, int, float]]:
    """The best phone sequence regardless of words: (first frame, last frame, log-likelihood) per phone."""
    model = Path(_pocketsphinx().get_model_path()) / "en-us"
    decoder = _decoder(lm=None, allphone=str(model / "en-us-phone.lm.bin"), backtrace=False, beam=1e-20, lw=2.0)
    _decode(decoder, pcm)
    return [(s.start_frame, s.end_frame, _log(s.ascore)) for s in decoder.seg()]


def word_fit(word_ll: float, first: int, last: int, loop: Sequence[tuple[int, int, float]]) -> float:
    """Log-likelihood per frame of a word minus the free phone loop's over the same frames.

    Args:
        word_ll: the aligned word's acoustic log-likelihood (nats).
        first: its first frame.
        last: its last frame (inclusive).
        loop: the free phone loop's phones, (first, last, log-likelihood); a phone partly inside the word counts
            for its share of frames inside.
    """
    free = 0.0
    for a, b, ll in loop:
        overlap = min(last, b) - max(first, a) + 1
        if overlap > 0:
            free += ll * overlap / (b - a + 1)
    return (word_ll - free) / (last - first + 1)


def _align_words(pcm: bytes, words: Sequence[str]) -> tuple[list[Phone], list[tuple[str, int, int, float]]] | None:
    """Phones and words of `words` aligned to the audio; None when pocketsphinx finds no alignment."""
    decoder = _decoder(lm=None)
    try:
        decoder.set_align_text(" ".join(words))
        _decode(decoder, pcm)
        if decoder.hyp() is None:
            return None
        aligned = [(_base(s.word), s.start_frame, s.end_frame, _log(s.ascore)) for s in decoder.seg()
                   if _is_word(s.word)]
        decoder.set_alignment()
        _decode(decoder, pcm)
        alignment = decoder.get_alignment()
    except RuntimeError:  # pocketsphinx's way of saying the text cannot be aligned to this audio
        return None
    if alignment is None:
        return None
    phones = []
    for word in alignment:
        name = "<sil>" if not _is_word(word.name) else _base(word.name)
        for phone in word:
            phones.append(Phone(phone.name, phone.start / PHONE_RATE, (phone.start + phone.duration) / PHONE_RATE,
                                name))
    return phones, aligned


def align(speech: np.ndarray, transcript: str | None = None, rate: int = MODEL_SAMPLE_RATE) -> PhoneAlignment:
    """The phones of a speech track, aligned to its transcript or to pocketsphinx's own recognition.

    Never raises on what the audio holds: music, noise, silence, another language or a transcript that does not
    match come back with `problem` set (and no phones where there is nothing to align).

    Args:
        speech: mono float samples in [-1, 1].
        transcript: the words spoken (None: recognise them).
        rate: sample rate; pocketsphinx's models want 16 kHz.

    Returns:
        the PhoneAlignment.

    Raises:
        Unavailable: pocketsphinx is not installed.
        ValueError: `rate` is not 16 kHz.
    """
    if rate != 16000:
        raise ValueError(f"pocketsphinx's acoustic model needs 16 kHz speech, got {rate} Hz")
    _pocketsphinx()
    source = "recognised" if transcript is None else "transcript"
    if _silent(speech, rate):
        return PhoneAlignment(source, "", problem=f"silence: the speech never reaches {SILENCE_DBFS:g} dBFS")
    pcm = _pcm(speech)
    posterior: float | None = None
    left_out: list[str] = []
    if transcript is None:
        words, posterior = _recognise(pcm)
        if not words:
            return PhoneAlignment(source, "", problem="no words recognised (music, noise or no speech?)")
    else:
        words, _ = transcript_words(transcript)
        known = set(_dictionary_lookup(_decoder(lm=None), words))
        left_out = [w for w in words if w not in known]
        words = [w for w in words if w in known]
        if not words:
            return PhoneAlignment(source, "", left_out=left_out,
                                  problem="the transcript has no word in the pronouncing dictionary")
    text = " ".join(words)
    result = _align_words(pcm, words)
    if result is None:
        problem = ("the transcript does not match the speech: pocketsphinx cannot align it"
                   if transcript is not None else "pocketsphinx cannot align its own recognition")
        return PhoneAlignment(source, text, posterior=posterior, left_out=left_out, problem=problem)
    phones, aligned = result
    loop = _free_loop(pcm)
    fitted = [Word(w, a / PHONE_RATE, (b + 1) / PHONE_RATE, word_fit(ll, a, b, loop)) for w, a, b, ll in aligned]
    share = float(np.mean([w.fit >= -FIT_NATS_PER_FRAME for w in fitted])) if fitted else None
    out = PhoneAlignment(source, text, phones, fitted, share, posterior, left_out)
    if transcript is not None and (share is None or share < MIN_WORDS_FIT):
        fits = sum(w.fit >= -FIT_NATS_PER_FRAME for w in fitted)
        out.problem = (f"the transcript does not match the speech: {fits} of {len(fitted)} words fit the audio "
                       f"(needs {MIN_WORDS_FIT:.0%})")
    elif transcript is None and posterior is not None and posterior < MIN_POSTERIOR:
        out.problem = (f"not recognised as English speech: mean word posterior {posterior:.2f} < {MIN_POSTERIOR:g} "
                       "(another language, or speech too unclear; pass --transcript if it is English)")
    return out
