"""Per-reply heuristics: each catches its case and lets ordinary replies through."""

from __future__ import annotations

import pytest

from filters.base import Item
from filters.heuristics import (
    EmptyFilter, LanguageFilter, LengthFilter, RefusalFilter, RepetitionFilter, TruncatedFilter, guess_language,
)
from test_filters import words


@pytest.mark.parametrize("flt, text, extra, reason", [
    (EmptyFilter(), "  ...  \n", {}, "empty"),
    (TruncatedFilter(), "a fine answer", {"finish_reason": "length"}, "finish_reason=length"),
    (TruncatedFilter(), "a fine", {"finish_reason": "content_filter"}, "finish_reason=content_filter"),
    (RepetitionFilter(), "\n".join(["same line here"] * 6 + ["other"]), {}, "duplicate_lines"),
    (RepetitionFilter(), "the cat sat " * 20, {}, "repeated_ngrams"),
    (RefusalFilter(), "As an AI language model, I cannot browse the internet.", {}, "refusal"),
    (LanguageFilter(["en"]), "Der Hund ist nicht in dem Haus, und die Katze ist auch nicht da.", {}, "language=de"),
    (LanguageFilter(["en"]), "这是一个关于河流和森林的简短回答，内容完全是中文。", {}, "language=cjk"),
    (LengthFilter(min_words=3), "too short", {}, "words<3"),
    (LengthFilter(max_chars=10), "this answer is too long", {}, "chars>10"),
])
def test_heuristic_catches(flt, text, extra, reason):
    out = flt.filter(Item(id="x", kind="generation", text=text, **extra))
    assert out is not True and out[1] == reason


@pytest.mark.parametrize("flt, text", [
    (EmptyFilter(), "ok"),
    (RepetitionFilter(), words(5, 80)),
    (RefusalFilter(), "Here is how to do it: " + words(6, 80) + ". A lazy assistant would say 'I'm sorry, but I can't help'."),
    (LanguageFilter(["en"]), "def add(a, b):\n    return a + b"),
    (LanguageFilter(["en"]), "The river is wide and the bridge is old, but it is safe to cross."),
])
def test_heuristic_passes(flt, text):
    assert flt.filter(Item(id="x", kind="generation", text=text)) is True


def test_language_filter_accepts_the_prompts_own_language():
    f = LanguageFilter(["en", "prompt"])
    german = "Der Hund ist nicht in dem Haus, und die Katze ist auch nicht da."
    asked_in_german = Item(id="x", kind="generation", text=german, meta={"prompt_text": "Wo ist der Hund? Ist er nicht in dem Haus?"})
    asked_in_english = Item(id="y", kind="generation", text=german, meta={"prompt_text": "Where is the dog? Is it not in the house?"})
    assert f.filter(asked_in_german) is True
    assert f.filter(asked_in_english)[1] == "language=de"


def test_guess_language_on_latin_scripts():
    assert guess_language("Le chat est sur la table et il ne veut pas partir pour le moment.")[0] == "fr"
    assert guess_language("El perro está en la casa y no quiere salir por la noche.")[0] == "es"
