"""Language codes and names Whisper-family models know (ISO 639-1, plus `haw` and `yue`)."""

from __future__ import annotations

from harken.errors import UnsupportedLanguage

LANGUAGE_NAMES: dict[str, str] = {
    "af": "afrikaans", "am": "amharic", "ar": "arabic", "as": "assamese", "az": "azerbaijani",
    "ba": "bashkir", "be": "belarusian", "bg": "bulgarian", "bn": "bengali", "bo": "tibetan",
    "br": "breton", "bs": "bosnian", "ca": "catalan", "cs": "czech", "cy": "welsh",
    "da": "danish", "de": "german", "el": "greek", "en": "english", "es": "spanish",
    "et": "estonian", "eu": "basque", "fa": "persian", "fi": "finnish", "fo": "faroese",
    "fr": "french", "gl": "galician", "gu": "gujarati", "ha": "hausa", "haw": "hawaiian",
    "he": "hebrew", "hi": "hindi", "hr": "croatian", "ht": "haitian creole", "hu": "hungarian",
    "hy": "armenian", "id": "indonesian", "is": "icelandic", "it": "italian", "ja": "japanese",
    "jw": "javanese", "ka": "georgian", "kk": "kazakh", "km": "khmer", "kn": "kannada",
    "ko": "korean", "la": "latin", "lb": "luxembourgish", "ln": "lingala", "lo": "lao",
    "lt": "lithuanian", "lv": "latvian", "mg": "malagasy", "mi": "maori", "mk": "macedonian",
    "ml": "malayalam", "mn": "mongolian", "mr": "marathi", "ms": "malay", "mt": "maltese",
    "my": "myanmar", "ne": "nepali", "nl": "dutch", "nn": "nynorsk", "no": "norwegian",
    "oc": "occitan", "pa": "punjabi", "pl": "polish", "ps": "pashto", "pt": "portuguese",
    "ro": "romanian", "ru": "russian", "sa": "sanskrit", "sd": "sindhi", "si": "sinhala",
    "sk": "slovak", "sl": "slovenian", "sn": "shona", "so": "somali", "sq": "albanian",
    "sr": "serbian", "su": "sundanese", "sv": "swedish", "sw": "swahili", "ta": "tamil",
    "te": "telugu", "tg": "tajik", "th": "thai", "tk": "turkmen", "tl": "tagalog",
    "tr": "turkish", "tt": "tatar", "uk": "ukrainian", "ur": "urdu", "uz": "uzbek",
    "vi": "vietnamese", "yi": "yiddish", "yo": "yoruba", "zh": "chinese", "yue": "cantonese",
}  # fmt: skip

_BY_NAME = {name: code for code, name in LANGUAGE_NAMES.items()}
_ALIASES = {"jv": "jw", "iw": "he", "nb": "no", "zh-cn": "zh", "zh-tw": "zh", "zh-hans": "zh",
            "zh-hant": "zh", "en-us": "en", "en-gb": "en", "mandarin": "zh"}  # fmt: skip


def normalize_language(value: str | None) -> str | None:
    """`value` as a known code; None for auto-detection. Raises KeyError when unknown.

    Accepts codes in any case, common regional tags (`en-US`, `zh-CN`) and English names
    (`german`), because clients send all of these.
    """
    if value is None:
        return None
    key = value.strip().lower().replace("_", "-")
    if key in ("", "auto"):
        return None
    if key in LANGUAGE_NAMES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    if key in _BY_NAME:
        return _BY_NAME[key]
    base = key.split("-", 1)[0]
    if base in LANGUAGE_NAMES:
        return base
    raise KeyError(value)


def language_code(value: str | None, param: str = "language") -> str | None:
    """`normalize_language`, with an unknown value refused as a request error naming `param`.
    Never silently falls back to a default language."""
    try:
        return normalize_language(value)
    except KeyError:
        raise UnsupportedLanguage(
            f"Unknown language {value!r}: use an ISO 639-1 code such as 'en', 'zh' or 'de', "
            "or 'auto' to detect it.",
            param=param,
        ) from None


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)
