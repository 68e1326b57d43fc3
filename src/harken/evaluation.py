"""Word and character error rates of a model on a manifest of recordings and their references.

So that users can check a model on their own recordings before they trust it. One definition
of the score, used by `harken eval`, the tests and the benchmarks: both sides normalised with
Whisper's own text normalisers (OpenAI's `EnglishTextNormalizer` for English, its
`BasicTextNormalizer` otherwise, from the `whisper-normalizer` package), then aligned by
jiwer. References keep the style of their source (upper case without punctuation, or mixed
case with digits), which the normaliser evens out; Chinese, Japanese and Korean are scored by
characters (CER) because they are not written with spaces between words.

A manifest is JSON Lines, one recording a line:
`{"id": "...", "path": "audio/x.wav", "text": "reference", "language": "en", "duration_s": 4.2}`
with `path` relative to the manifest's folder (`id` and `duration_s` optional).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jiwer
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

Metric = Literal["wer", "cer"]

# Written without spaces between words: scored per character.
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "ko", "yue", "th", "lo", "my", "km", "bo"})

_ENGLISH = EnglishTextNormalizer()
_BASIC = BasicTextNormalizer()
_QUOTES = str.maketrans({"’": "'", "‘": "'", "`": "'"})
# Two readings of Whisper's English normaliser that would score right answers as wrong, evened
# out before it runs: it joins number words ("five five" → "55") but not digits ("5 5"), so
# lone digits are spelt first; and it reads an elision's apostrophe as a contraction
# ("feed'st" → "feed saint", "tatter'd" → "tatter would"), so elisions lose it first.
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_LONE_DIGIT = re.compile(r"(?<![\w.,$£€%])(\d)(?![\w.,%])")
_ELISION = re.compile(
    r"\b(?!(?:i|you|he|she|it|we|they|who|that|there|what|how)'d\b)(\w+)'(st|d)\b", re.IGNORECASE
)


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


def normalize_text(text: str, language: str = "en") -> str:
    """Whisper's normalisation. English: lower case, no punctuation, contractions and British
    spellings evened out, `Mr.` → `mister`, numbers as digits (so "ten" and "10" agree).
    Other languages: lower case, no punctuation or symbols, digits left as written. Character
    languages: every character separated by a space, whitespace dropped. Curly quotes count as
    apostrophes (the normaliser would otherwise split "it’s" into two words)."""
    text = text.translate(_QUOTES)
    if metric_for(language) == "cer":
        return " ".join(ch for ch in _BASIC(text) if not ch.isspace())
    if not language.lower().startswith("en"):
        return " ".join(str(_BASIC(text)).split())
    text = _ELISION.sub(r"\1\2", text)
    text = _LONE_DIGIT.sub(lambda m: _DIGITS[int(m[1])], text)
    return " ".join(str(_ENGLISH(text)).split())


def count_errors(reference: str, hypothesis: str) -> int:
    """Substitutions, deletions and insertions between two normalised texts (jiwer's alignment
    of their space-separated tokens)."""
    if not reference.split():
        return len(hypothesis.split())
    words = jiwer.process_words(reference, hypothesis)
    return int(words.substitutions + words.deletions + words.insertions)


def error_rate(reference: str, hypothesis: str, language: str = "en") -> float:
    """WER (CER for character languages) of one hypothesis after normalising both sides."""
    ref = normalize_text(reference, language)
    errors = count_errors(ref, normalize_text(hypothesis, language))
    length = len(ref.split())
    return errors / length if length else float(errors > 0)


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
    reference = normalize_text(item.text, item.language)
    return ClipScore(
        item=item,
        hypothesis=hypothesis,
        errors=count_errors(reference, normalize_text(hypothesis, item.language)),
        reference_length=len(reference.split()),
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


def report(model: str, scores: list[ClipScore], elapsed: float) -> dict[str, Any]:
    """Every figure of a run, per language and per clip (`harken eval --json`)."""
    groups = by_language(scores)
    return {
        "model": model,
        "audio_seconds": round(sum(g.seconds for g in groups), 3),
        "elapsed_seconds": round(elapsed, 3),
        "languages": [
            {
                "language": g.language,
                "metric": g.metric,
                "clips": len(g.clips),
                "audio_seconds": round(g.seconds, 3),
                "errors": g.errors,
                "reference_length": g.reference_length,
                "rate": g.rate,
            }
            for g in groups
        ],
        "clips": [
            {
                "id": c.item.id,
                "language": c.item.language,
                "metric": c.metric,
                "rate": c.rate,
                "errors": c.errors,
                "reference_length": c.reference_length,
                "reference": c.item.text,
                "hypothesis": c.hypothesis,
            }
            for c in scores
        ],
    }


def table(model: str, scores: list[ClipScore], elapsed: float) -> list[str]:
    """The summary `harken eval` prints: one line per language."""
    groups = by_language(scores)
    audio = sum(g.seconds for g in groups)
    lines = [
        f"model {model}: {len(scores)} clips, {audio:.1f} s of audio in {elapsed:.1f} s "
        f"({audio / max(elapsed, 1e-6):.1f}× real time)",
        f"{'language':<10}{'metric':<8}{'clips':>6}{'audio s':>10}{'errors':>14}{'rate':>9}",
    ]
    for g in groups:
        lines.append(
            f"{g.language:<10}{g.metric.upper():<8}{len(g.clips):>6}{g.seconds:>10.1f}"
            f"{f'{g.errors}/{g.reference_length}':>14}{g.rate:>9.1%}"
        )
    return lines
