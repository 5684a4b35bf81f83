"""Cheap per-response quality heuristics: empty, truncated, repetition, refusal, wrong language,
length bounds. Each is a Filter; the thresholds come from the config."""

from __future__ import annotations

import re
from collections import Counter

from .base import Filter, Item

_WORD = re.compile(r"\w+")


class EmptyFilter(Filter):
    """Nothing but whitespace or punctuation."""

    name = "empty"

    def filter(self, item: Item):
        return bool(_WORD.search(item.text)) or (False, "empty")


class TruncatedFilter(Filter):
    """The answer is cut off: the generator hit its token limit (finish_reason=length), or the
    provider's moderation stopped it (finish_reason=content_filter)."""

    name = "truncated"

    def filter(self, item: Item):
        if item.finish_reason in ("length", "content_filter"):
            return False, f"finish_reason={item.finish_reason}"
        return True


class RepetitionFilter(Filter):
    """Degenerate loops: the same line again and again, or few distinct word n-grams
    (Gopher-style ratios; the thresholds are the config's)."""

    name = "repetition"

    def __init__(self, max_duplicate_line_frac: float = 0.3, min_distinct_ngram_frac: float = 0.5,
                 ngram: int = 3, min_words: int = 30, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.max_dup_lines, self.min_distinct = max_duplicate_line_frac, min_distinct_ngram_frac
        self.ngram, self.min_words = ngram, min_words

    def filter(self, item: Item):
        lines = [ln.strip() for ln in item.text.splitlines() if ln.strip()]
        if len(lines) >= 4:
            dup = sum(c - 1 for c in Counter(lines).values()) / len(lines)
            if dup > self.max_dup_lines:
                return False, "duplicate_lines", {"duplicate_line_frac": round(dup, 3)}
        words = item.words()
        if len(words) >= self.min_words:
            grams = list(zip(*(words[i:] for i in range(self.ngram))))
            distinct = len(set(grams)) / len(grams)
            if distinct < self.min_distinct:
                return False, "repeated_ngrams", {"distinct_ngram_frac": round(distinct, 3)}
        return True


DEFAULT_REFUSALS = [
    r"\bI(?:'m| am) (?:sorry|afraid),? but I (?:can(?:'|no)t|won't|am unable to|'m unable to)",
    r"\bI (?:can(?:'|no)t|won't|am unable to) (?:help|assist|comply|provide|do that|fulfill)",
    r"\bAs an AI(?: language model)?,? I (?:can(?:'|no)t|don't|do not|am not able)",
    r"\bI'm not able to (?:help|assist|provide)",
]


class RefusalFilter(Filter):
    """The model declined. Only the opening `window` characters count, so an answer that later
    quotes a refusal is not caught."""

    name = "refusal"

    def __init__(self, patterns: list[str] | None = None, window: int = 300, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.patterns = [re.compile(p, re.I) for p in (patterns or DEFAULT_REFUSALS)]
        self.any = re.compile("|".join(f"(?:{p.pattern})" for p in self.patterns), re.I)  # one scan per reply
        self.window = window

    def filter(self, item: Item):
        head = item.text[: self.window].replace("\u2019", "'")
        if not self.any.search(head):
            return True
        which = next(p.pattern for p in self.patterns if p.search(head))
        return False, "refusal", {"pattern": which}


# A few hundred of the most frequent function words per language would be a model; these short
# lists are enough to tell languages apart on a paragraph, which is all this filter needs.
STOPWORDS = {
    "en": "the and to of a in is that it for you with on as are be this was have or not but by at can your from if an will what which there do".split(),
    "de": "der die und das ist nicht ich zu den von mit sie es ein eine auf für sich dem auch als wie wir oder werden".split(),
    "fr": "le la les et des est une un que pas pour dans vous qui il ce sur sont avec au du ne je se plus".split(),
    "es": "el la de que y en los las es un una por para con no se del al lo como su más pero sus está".split(),
    "it": "il di che la è e un una per non sono le della del con si gli ma come anche questo".split(),
    "pt": "o a de que e do da em um uma para com não os as se na no mais por dos das você".split(),
    "nl": "de het een en van is dat niet ik je op te zijn met voor er maar ook als bij".split(),
}
_LANG_ORDER = {lang: i for i, lang in enumerate(STOPWORDS)}
_STOP_LANGS: dict[str, list[str]] = {}
for _lang, _words in STOPWORDS.items():
    for _w in _words:
        _STOP_LANGS.setdefault(_w, []).append(_lang)
_SCRIPTS = {
    "cjk": re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
}
_NON_LATIN = re.compile("|".join(p.pattern for p in _SCRIPTS.values()))
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def guess_language(text: str, max_chars: int = 2000, words: list[str] | None = None) -> tuple[str, float]:
    """(language or script, confidence) from the dominant script and, for Latin script, the
    share of each language's function words. 'unknown' when the text gives too little to go on.
    The first max_chars characters are plenty to tell; `words`: the text's lower-cased words."""
    text = text[:max_chars]
    if _NON_LATIN.search(text):
        letters = len(_LATIN.findall(text))
        scripts = {name: len(p.findall(text)) for name, p in _SCRIPTS.items()}
        top_script, top_n = max(scripts.items(), key=lambda kv: kv[1])
        if top_n > letters:
            return top_script, top_n / max(1, top_n + letters)
    words = words[: max_chars // 4] if words is not None else _WORD.findall(text.lower())
    if len(words) < 5:
        return "unknown", 0.0
    counts = Counter(lang for w in words for lang in _STOP_LANGS.get(w, ()))
    if not counts:
        return "unknown", 0.0
    lang, hits = max(counts.items(), key=lambda kv: (kv[1], -_LANG_ORDER[kv[0]]))  # ties: the earlier listed
    return lang, hits / sum(counts.values())


class LanguageFilter(Filter):
    """The answer is not in the expected language(s); the entry "prompt" accepts the language
    the prompt is written in. Code, numbers and very short answers give 'unknown' and pass:
    better to keep them than to guess."""

    name = "language"

    def __init__(self, expected: list[str] | str = "en", min_confidence: float = 0.6, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.expected = {expected} if isinstance(expected, str) else set(expected)
        self.min_confidence = min_confidence

    def filter(self, item: Item):
        lang, conf = guess_language(item.text, words=item.words())
        if lang == "unknown" or lang in self.expected or conf < self.min_confidence:
            return True
        if "prompt" in self.expected and item.meta.get("prompt_text"):
            asked, asked_conf = guess_language(item.meta["prompt_text"])
            if asked == lang and asked_conf >= self.min_confidence:
                return True
        return False, f"language={lang}", {"confidence": round(conf, 3)}


class LengthFilter(Filter):
    """Word count and character count bounds (None: no bound)."""

    name = "length"

    def __init__(self, min_words: int | None = None, max_words: int | None = None,
                 max_chars: int | None = None, as_rejected: bool = False):
        super().__init__(as_rejected)
        self.min_words, self.max_words, self.max_chars = min_words, max_words, max_chars

    def filter(self, item: Item):
        n = len(item.words())
        if self.min_words is not None and n < self.min_words:
            return False, f"words<{self.min_words}", {"words": n}
        if self.max_words is not None and n > self.max_words:
            return False, f"words>{self.max_words}", {"words": n}
        if self.max_chars is not None and len(item.text) > self.max_chars:
            return False, f"chars>{self.max_chars}", {"chars": len(item.text)}
        return True
