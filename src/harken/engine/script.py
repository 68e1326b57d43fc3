"""Which script Chinese text is written in: Whisper writes Mandarin in Simplified or
Traditional characters as it happens to (`換一首歌` for 换一首歌), while MiMo answers in
Simplified. OpenCC converts, phrase by phrase, with its maintained dictionaries."""

from __future__ import annotations

import dataclasses
import functools
import re

from harken.engine.types import ChineseScript, Segment

CHINESE_SCRIPTS: tuple[ChineseScript, ...] = ("simplified", "traditional", "original")

# Only Mandarin ("zh"): Cantonese ("yue") is written in Traditional characters by custom, and
# Japanese kanji are not Chinese text.
_CONVERTED_LANGUAGES = frozenset({"zh"})
_CONFIGS = {"simplified": "t2s", "traditional": "s2t"}


# Scripts written without spaces between words (Chinese, Japanese; Korean has spaces): each of
# their characters counts as a word.
UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORDS = re.compile(rf"[{UNSPACED}]|[^\W{UNSPACED}]+")


# Nobody says several words (as `words_of` counts them) faster than this many a second.
FASTEST_WORDS_PER_SECOND = 10.0


def words_of(text: str) -> list[str]:
    """The words of `text`, without punctuation: runs of letters and digits, and each
    character of a script written without spaces (a Japanese sentence is not one word)."""
    return _WORDS.findall(text)


def repeated_in_a_row(words: list[str], shortest: int) -> bool:
    """Whether a run of `shortest` words or more stands twice in a row in `words`."""
    for length in range(shortest, len(words) // 2 + 1):
        for at in range(len(words) - 2 * length + 1):
            if words[at : at + length] == words[at + length : at + 2 * length]:
                return True
    return False


@functools.cache
def _converter(config: str):  # type: ignore[no-untyped-def]
    import opencc

    return opencc.OpenCC(config)


def converts(language: str | None, script: ChineseScript) -> bool:
    return script != "original" and language in _CONVERTED_LANGUAGES


def convert_text(text: str, script: ChineseScript) -> str:
    if script == "original" or not text:
        return text
    return str(_converter(_CONFIGS[script]).convert(text))


def convert_segment(segment: Segment, script: ChineseScript) -> Segment:
    """The segment with its text and words in `script`; times and everything else kept.

    The words are converted as one string (OpenCC's phrase tables then see whole phrases, as
    in the text) and cut back at the same places, so the words still join to the text."""
    text = convert_text(segment.text, script)
    words = segment.words
    if words:
        joined = "".join(w.word for w in words)
        converted = convert_text(joined, script)
        if len(converted) != len(joined):  # a phrase changed length: word by word instead
            pieces = [convert_text(w.word, script) for w in words]
        else:
            pieces, at = [], 0
            for w in words:
                pieces.append(converted[at : at + len(w.word)])
                at += len(w.word)
        if joined == segment.text:
            text = "".join(pieces)
        words = tuple(dataclasses.replace(w, word=p) for w, p in zip(words, pieces, strict=True))
    return dataclasses.replace(segment, text=text, words=words)
