"""GRID clips spell their sentence in their file names."""

from __future__ import annotations

from pathlib import Path

from lipsync_service.evaluation.phones import DIGIT_WORDS

# GRID's grammar: command colour preposition letter digit adverb, one letter each in the file name.
_GRID = [dict(b="bin", l="lay", p="place", s="set"), dict(b="blue", g="green", r="red", w="white"),
         dict(a="at", b="by", i="in", w="with"), None,
         {**{str(d): w for d, w in enumerate(DIGIT_WORDS)}, "z": "zero"},
         dict(a="again", n="now", p="please", s="soon")]


def grid_transcript(name: str) -> str:
    """The sentence a GRID clip's name spells: bbaf2n -> "bin blue at f two now"."""
    code = Path(name).stem.split("_")[-1]
    return " ".join(c if table is None else table[c] for c, table in zip(code, _GRID))
