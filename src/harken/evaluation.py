"""Word and character error rates of a model on a manifest of recordings and their references.

So that users can check a model on their own recordings before they trust it. References keep
the style of their source (upper case without punctuation, or mixed case with digits), so both
sides are normalised before scoring; Chinese, Japanese and Korean are scored by characters
(CER) because they are not written with spaces between words.

A manifest is JSON Lines, one recording a line:
`{"id": "...", "path": "audio/x.wav", "text": "reference", "language": "en", "duration_s": 4.2}`
with `path` relative to the manifest's folder (`id` and `duration_s` optional).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Metric = Literal["wer", "cer"]

# Written without spaces between words: scored per character.
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue", "th", "lo", "my", "km", "bo"})

_ENGLISH_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"))


class ManifestError(ValueError):
    """The manifest can't be read: names the line and what is wrong with it."""


@dataclass(frozen=True)
class ManifestItem:
    id: str
    path: Path
    text: str
    language: str
    duration: float | None = None


def read_manifest(
    manifest: Path,
    *,
    languages: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[ManifestItem]:
    """The manifest's items, optionally only some languages and at most `limit` of them."""
    wanted = {code.lower() for code in languages} if languages else None
    items: list[ManifestItem] = []
    base = manifest.parent
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            path, text, language = record["path"], record["text"], record["language"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ManifestError(
                f"{manifest}, line {number}: expected a JSON object with path, text and "
                f"language ({exc})"
            ) from None
        language = str(language).lower()
        if wanted is not None and language not in wanted:
            continue
        duration = record.get("duration_s")
        items.append(
            ManifestItem(
                id=str(record.get("id") or Path(path).stem),
                path=(base / path) if not Path(path).is_absolute() else Path(path),
                text=str(text),
                language=language,
                duration=float(duration) if duration is not None else None,
            )
        )
        if limit is not None and len(items) >= limit:
            break
    return items


# --- normalisation
def metric_for(language: str) -> Metric:
    return "cer" if language.lower() in CHARACTER_LANGUAGES else "wer"


def spell_number(n: int) -> str:
    """An integer in English words ("1881" → "one thousand eight hundred eighty one")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {spell_number(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{spell_number(high)} {name}" + (f" {spell_number(rest)}" if rest else "")
    raise AssertionError("unreachable")


def normalize_text(text: str, language: str = "en") -> str:
    """Lower case, no punctuation, one space between words; English numbers and common
    abbreviations spelt out, so "Mr. Smith, 10 years" and "MISTER SMITH TEN YEARS" agree.
    For character languages, every character separated by a space and whitespace dropped."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    english = language.lower().startswith("en")
    if english:
        # Thousands separators and decimals before punctuation goes: "1,000" → "1000".
        text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
        text = re.sub(r"(\d)\.(\d)", r"\1 point \2", text)
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = text.replace("'", "")
    if metric_for(language) == "cer":
        return " ".join(ch for ch in text if not ch.isspace())
    words = []
    for word in text.split():
        if english and word.isdigit() and len(word) <= 12:
            words.extend(spell_number(int(word)).split())
        elif english:
            words.append(_ENGLISH_ABBREVIATIONS.get(word, word))
        else:
            words.append(word)
    return " ".join(words)


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitutions, deletions, insertions)."""
    if len(reference) < len(hypothesis):
        reference, hypothesis = hypothesis, reference
    previous = list(range(len(hypothesis) + 1))
    for i, ref_token in enumerate(reference, 1):
        current = [i]
        for j, hyp_token in enumerate(hypothesis, 1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ref_token != hyp_token),
                )
            )
        previous = current
    return previous[-1]


# --- scores
@dataclass(frozen=True)
class ClipScore:
    item: ManifestItem
    hypothesis: str
    errors: int
    reference_length: int
    seconds: float  # audio seconds

    @property
    def metric(self) -> Metric:
        return metric_for(self.item.language)

    @property
    def rate(self) -> float:
        return self.errors / self.reference_length if self.reference_length else 0.0


def score_clip(item: ManifestItem, hypothesis: str, seconds: float | None = None) -> ClipScore:
    reference = normalize_text(item.text, item.language).split()
    hyp = normalize_text(hypothesis, item.language).split()
    return ClipScore(
        item=item,
        hypothesis=hypothesis,
        errors=edit_distance(reference, hyp),
        reference_length=len(reference),
        seconds=seconds if seconds is not None else (item.duration or 0.0),
    )


@dataclass
class LanguageScore:
    """Errors over reference tokens, summed over every clip of one language (corpus rate)."""

    language: str
    clips: list[ClipScore] = field(default_factory=list)

    @property
    def metric(self) -> Metric:
        return metric_for(self.language)

    @property
    def errors(self) -> int:
        return sum(c.errors for c in self.clips)

    @property
    def reference_length(self) -> int:
        return sum(c.reference_length for c in self.clips)

    @property
    def rate(self) -> float:
        return self.errors / self.reference_length if self.reference_length else 0.0

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.clips)


def by_language(scores: Iterable[ClipScore]) -> list[LanguageScore]:
    """One aggregate per language, the languages with the most audio first."""
    groups: dict[str, LanguageScore] = {}
    for clip in scores:
        groups.setdefault(clip.item.language, LanguageScore(clip.item.language)).clips.append(clip)
    return sorted(groups.values(), key=lambda g: (-g.seconds, g.language))


def evaluate(
    items: Iterable[ManifestItem], transcribe: Callable[[ManifestItem], tuple[str, float]]
) -> list[LanguageScore]:
    """Transcribe every item (`transcribe` returns the text and the audio's seconds) and score."""
    return by_language(score_clip(item, *transcribe(item)) for item in items)
