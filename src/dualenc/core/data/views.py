"""Query views: more than one query per function, for training on queries worded like searches.

``summary`` is the docstring summary as extracted. ``name`` is the function's qualified name
in words ("JSONDecoder.raw_decode" -> "json decoder raw decode"): what a user who half
remembers an identifier types. ``verb`` is the summary as a search query: its leading verb in
the base form and lowercased, no final period ("Returns the list of open files." -> "return
the list of open files").
"""

from __future__ import annotations

import re

QUERY_VIEWS: tuple[str, ...] = ("summary", "name", "verb")

# "JSONDecoder" -> JSON, Decoder; "raw_decode2" -> raw, decode, 2; "HTTPServer" -> HTTP, Server
_IDENTIFIER_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_LETTER = re.compile(r"[^\W\d_]")


def name_query(symbol: str) -> str | None:
    """The words of a qualified name, lowercased; None when it has fewer than two words.

    Digits are words of their own but do not count towards the two ("f2" is one word).
    """
    words = _IDENTIFIER_WORD.findall(symbol)
    if sum(bool(_LETTER.search(word)) for word in words) < 2:
        return None
    return " ".join(word.lower() for word in words)


# Auxiliaries and modals read the same in a question and a search ("is the file open"), and
# "be"/"have" would not: they are only lowercased.
_LEFT_ALONE = frozenset(
    {"is", "are", "was", "were", "has", "does", "can", "could", "should", "will", "would", "may", "must"}
)
# -s words that are not a verb's third person, or whose stem the rules below get wrong
_NOT_THIRD_PERSON = frozenset({"this", "its", "series", "species", "always", "sometimes", "perhaps"})
_IRREGULAR = {"caches": "cache", "goes": "go", "echoes": "echo", "lies": "lie", "dies": "die", "ties": "tie"}


def base_form(word: str) -> str:
    """A lowercase verb's base form from its third person singular; other words unchanged.

    "returns" -> "return", "applies" -> "apply", "pushes" -> "push", "fixes" -> "fix",
    "passes" -> "pass", "uses" -> "use", "closes" -> "close", "normalizes" -> "normalize".
    Words ending in -ss, -us or -is ("process", "status", "analysis") are not -s forms.
    A plural noun at the start of a summary ("Helpers for ...") loses its -s too: telling
    it from a verb needs a tagger, and both read as a search query.
    """
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _LEFT_ALONE or word in _NOT_THIRD_PERSON or len(word) < 3 or not word.endswith("s"):
        return word
    if word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    return word[:-1]


_LEADING_WORD = re.compile(r"([A-Za-z]+)(?=\W|$)")


def verb_query(summary: str) -> str:
    """The summary with its leading verb in the base form and lowercased, no final period.

    Only a plain word is changed, "Returns" or "returns": an acronym or identifier at the
    start ("JSON", "getValue") and the rest of the text keep their case, so names in the
    query still match the code.
    """
    text = summary.strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    match = _LEADING_WORD.match(text)
    if match and (match.group(1)[1:].islower() or len(match.group(1)) == 1):
        word = match.group(1)
        text = base_form(word.lower()) + text[len(word) :]
    return text


def query_views(summary: str, symbol: str, views: tuple[str, ...]) -> list[tuple[str, str]]:
    """(view, query) for each of ``views`` that applies to the function, in that order.

    ``name`` applies to names of two or more words; ``verb`` when it changes the summary.
    """
    queries: list[tuple[str, str]] = []
    for view in views:
        if view == "summary":
            queries.append((view, summary))
        elif view == "name":
            name = name_query(symbol)
            if name is not None:
                queries.append((view, name))
        elif view == "verb":
            verb = verb_query(summary)
            if verb != summary:
                queries.append((view, verb))
        else:
            raise ValueError(f"unknown query view {view!r}")
    return queries
