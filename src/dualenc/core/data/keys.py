"""Dedup keys: int64 hashes under which two queries, or two codes, count as the same.

Training keeps pairs that share a key out of one batch (they would be false in-batch
negatives), evaluation pools codes by key, and miners exclude clones of the positive.
"""

from __future__ import annotations

import hashlib
import io
import keyword
import re
import tokenize


def stable_int64(text: str) -> int:
    """A hash that is the same in every process and on every machine (unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def query_key(query: str) -> int:
    """int64 key of a query: case and whitespace do not matter."""
    return stable_int64(" ".join(query.lower().split()))


# skipped without ending a statement: a docstring may be followed by a comment
_INVISIBLE_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING}
_STATEMENT_BOUNDARY = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_LAYOUT_TOKENS = _STATEMENT_BOUNDARY | {tokenize.ENDMARKER}
_WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")


def _python_tokens(code: str) -> list[str]:
    """Token strings without comments, layout and docstrings. Raises on untokenizable code.

    A docstring is any statement made only of string literals: it does nothing at run time.
    """
    tokens: list[str] = []
    statement_strings: list[str] = []
    at_statement_start = True
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        kind = token.type
        if kind in _INVISIBLE_TOKENS:
            continue
        if kind == tokenize.STRING and (at_statement_start or statement_strings):
            statement_strings.append(token.string)
            at_statement_start = False
            continue
        if kind == tokenize.NEWLINE:
            statement_strings.clear()  # the statement was only strings: a docstring
        tokens.extend(statement_strings)
        statement_strings.clear()
        at_statement_start = kind in _STATEMENT_BOUNDARY
        if kind not in _LAYOUT_TOKENS:
            tokens.append(token.string)
    return tokens + statement_strings


def _rename_identifiers(tokens: list[str]) -> list[str]:
    """Each distinct non-keyword name becomes v0, v1, ... in order of first use."""
    names: dict[str, str] = {}
    renamed = []
    for token in tokens:
        if token.isidentifier() and not keyword.iskeyword(token):
            token = names.setdefault(token, f"v{len(names)}")
        renamed.append(token)
    return renamed


def normalised_code_key(code: str, normalise_identifiers: bool = False) -> int:
    """int64 key of code with comments, docstrings and whitespace stripped.

    Python is tokenized; code that does not tokenize as Python (other languages, snippets
    with broken indentation) falls back to its word and symbol sequence, so only
    whitespace is ignored for it. ``normalise_identifiers`` renames every name
    canonically, so renamed clones share a key.
    """
    try:
        tokens = _python_tokens(code)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        tokens = _WORD_OR_SYMBOL.findall(code)
    if normalise_identifiers:
        tokens = _rename_identifiers(tokens)
    return stable_int64(" ".join(tokens))
