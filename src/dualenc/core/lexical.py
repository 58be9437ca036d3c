"""The lexical side of search: ``code_words``, the identifier-aware tokenizer (the ``bm25``
miner's too), and ``LexicalIndex``, Okapi BM25 over those words as one sparse matrix.

BM25 here is Lucene's: a document d's score for a query is the sum over the query's words t
(a word said twice counts twice) of

    idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)),
    idf(t) = log(1 + (N - n_t + 0.5) / (n_t + 0.5)),

tf the count of t in d, |d| the number of words of d, avgdl their mean over the N documents,
n_t the documents holding t; k1 = 1.2 and b = 0.75 by default. Every weight is computed when
the index is built and kept as a ``scipy.sparse`` CSR matrix of words x documents (each row a
word's postings), so a query is scored by adding its few words' posting rows, each weighted
by how often the query says the word, into one dense row of document scores (numpy fancy
indexing over the postings touched); nothing loops over documents in Python.
Columns are documents in ascending id order (the faiss ids of an index folder, the pool
positions of an evaluation).

In an index folder it is two files: ``lexical.npz`` (the CSR arrays and the ids; numpy
arrays only, read with ``allow_pickle=False``) and ``lexical_vocab.json`` (the words, row by
row); both carry the build's generation, as meta.sqlite does.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualenc.core.io import chunks
from dualenc.errors import DualencError

LEXICAL_FILE = "lexical.npz"
VOCAB_FILE = "lexical_vocab.json"
LEXICAL_FORMAT = 1
REBUILD = "rebuild the index (dualenc index build --update rebuilds the lexical part from the records)"
BM25_K1 = 1.2
# documents tokenised per step of a build
POSTINGS_CHUNK = 8192
BM25_B = 0.75
IDF = "log(1 + (N - n + 0.5) / (n + 0.5))"
TOKENIZER = (
    "code_words: identifier parts (camelCase, snake_case, dotted names) lower-cased, "
    "plus each multi-part identifier whole"
)

# a run of letters, digits and underscores: an identifier, a number, or a word of a query
_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+")
# an upper-case run not followed by a lower-case letter (HTTP in HTTPServer), a capitalised
# or lower-case word, or a number: identifiers split at case changes, digits, _ and symbols
_WORD_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def code_words(text: str) -> list[str]:
    """The words of code or of a query: each identifier's lower-cased parts, then, when it has
    several, the whole identifier lower-cased (leading and trailing ``_`` dropped).

    ``getFileName`` and ``get_file_name`` both give get, file, name and themselves
    (getfilename, get_file_name); ``os.path.join`` gives os, path, join; a query's plain words
    are themselves. Only ASCII letters and digits make words."""
    words = []
    for identifier in _IDENTIFIER.findall(text):
        parts = _WORD_PART.findall(identifier)
        words.extend(part.lower() for part in parts)
        if len(parts) > 1:
            words.append(identifier.strip("_").lower())
    return words


class LexicalIndex:
    """BM25 weights of documents' ``code_words`` as a words x documents CSR matrix.

    ``ids``: each column's id, ascending (int64); ``words``: each row's word.
    """

    def __init__(
        self,
        weights,
        ids: np.ndarray,
        words: list[str],
        k1: float,
        b: float,
        row_of: dict[str, int] | None = None,
    ):
        self.weights = weights  # scipy.sparse.csr_matrix [len(words), len(ids)], float64
        self.ids = ids
        self.words = words
        # each word's row; a build hands over the dict it made rather than a second one
        self.row_of = {word: row for row, word in enumerate(words)} if row_of is None else row_of
        self.k1, self.b = k1, b
        # the CSR arrays as plain numpy, int64 offsets: a query reads slices of them
        self._indptr = weights.indptr.astype(np.int64, copy=False)
        self._indices = weights.indices
        self._data = weights.data

    @property
    def count(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls,
        codes: Iterable[str],
        ids: Sequence[int] | np.ndarray | None = None,
        k1: float = BM25_K1,
        b: float = BM25_B,
        spill_dir: str | os.PathLike | None = None,
    ) -> LexicalIndex:
        """The index of ``codes``; ``ids`` (default 0, 1, ...) must ascend, one per code.

        Two passes, so that memory holds the finished index and one chunk, never a second copy
        of the postings. The first reads ``codes`` once, a chunk at a time, and appends each
        chunk's postings (word, document, count) to an unnamed temporary file in ``spill_dir``
        (the system's temporary folder by default; gone when closed, or when the process dies).
        Once every word's document count is known, each word's place in the CSR arrays is too:
        the second pass reads the chunks back in document order and writes their weights
        straight into those places."""
        from scipy import sparse

        row_of: dict[str, int] = {}
        documents_with = np.zeros(1024, dtype=np.int64)  # by first-seen row, grown by doubling
        lengths: list[np.ndarray] = []
        chunk_postings: list[int] = []
        count = 0
        with tempfile.TemporaryFile(dir=spill_dir) as spill:
            for chunk in chunks(codes, POSTINGS_CHUNK):
                rows, columns, counts, chunk_lengths = _chunk_postings(chunk, row_of)
                lengths.append(chunk_lengths)
                if len(row_of) > len(documents_with):
                    documents_with = np.concatenate(
                        [documents_with, np.zeros(max(len(row_of), 2 * len(documents_with)), np.int64)]
                    )
                documents_with[: len(row_of)] += np.bincount(rows, minlength=len(row_of))
                for array in (rows, columns + count, counts):
                    array.astype(np.int32, copy=False).tofile(spill)
                chunk_postings.append(len(rows))
                count += len(chunk)
            ids = np.arange(count, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
            if len(ids) != count:
                raise DualencError(f"{len(ids)} ids for {count} codes; give one per code")
            if len(ids) > 1 and not np.all(np.diff(ids) > 0):
                raise DualencError("lexical index ids must ascend")
            # words in sorted order: the same documents give the same matrix whatever order they came in
            words = sorted(row_of)
            sorted_row = np.empty(len(words), dtype=np.int32)  # first-seen row -> sorted row
            sorted_row[np.fromiter(map(row_of.__getitem__, words), np.int64, len(words))] = np.arange(
                len(words), dtype=np.int32
            )
            row_of.update((word, row) for row, word in enumerate(words))  # renumbered in place
            with_word = np.zeros(len(words), dtype=np.int64)
            with_word[sorted_row] = documents_with[: len(words)]
            del documents_with
            indptr = np.zeros(len(words) + 1, dtype=np.int64)
            np.cumsum(with_word, out=indptr[1:])
            idf = np.log1p((count - with_word + 0.5) / (with_word + 0.5))
            lengths_all = np.concatenate(lengths).astype(np.float64) if lengths else np.zeros(0)
            average = float(lengths_all.mean()) if count and lengths_all.sum() else 1.0
            indices = np.empty(int(indptr[-1]), dtype=np.int32)
            data = np.empty(int(indptr[-1]), dtype=np.float64)
            filled = indptr[:-1].copy()  # where each word's next posting goes
            spill.seek(0)
            for size in chunk_postings:
                rows, columns, counts = (np.fromfile(spill, dtype=np.int32, count=size) for _ in range(3))
                rows = sorted_row[rows]
                # by word, and within a word by document (a stable sort keeps the chunk's order)
                order = np.argsort(rows, kind="stable")
                rows, columns, tf = rows[order], columns[order], counts[order].astype(np.float64)
                firsts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
                runs = np.diff(np.append(firsts, len(rows)))
                places = filled[rows] + (np.arange(len(rows)) - np.repeat(firsts, runs))
                filled[rows[firsts]] += runs
                indices[places] = columns
                data[places] = _bm25_weights(idf[rows], tf, lengths_all[columns], average, k1, b)
        weights = sparse.csr_matrix((data, indices, indptr), shape=(len(words), count))
        return cls(weights, ids, words, k1, b, row_of)

    def query_words(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, counts): the rows of the known words of ``query``, ascending, and how often
        it says each."""
        known = [self.row_of[word] for word in code_words(query) if word in self.row_of]
        return np.unique(np.asarray(known, dtype=np.int64), return_counts=True)

    def score_row(self, query: str, out: np.ndarray | None = None) -> np.ndarray:
        """[count] float64: the query's BM25 score of every document, in column order (into
        ``out``, zeros, when given).

        Its words' posting rows, each times its count, added in ascending row order: a
        document's sum takes its terms in the order a sparse product would, so the scores are
        the same to the last bit whichever way they are computed. ``np.add.at`` adds a row in
        one unbuffered pass (at 100k documents a query touches ~90k postings; a sparse
        product or a fancy-indexed ``+=`` took 2-3x as long)."""
        scores = np.zeros(self.count, dtype=np.float64) if out is None else out
        rows, counts = self.query_words(query)
        for row, count in zip(rows.tolist(), counts.tolist(), strict=True):
            start, end = self._indptr[row], self._indptr[row + 1]
            weights = self._data[start:end]
            np.add.at(scores, self._indices[start:end], weights if count == 1 else weights * float(count))
        return scores

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """[Q, count] float64: each query's ``score_row``."""
        scores = np.zeros((len(queries), self.count), dtype=np.float64)
        for row, query in enumerate(queries):
            self.score_row(query, scores[row])
        return scores

    def columns(self, ids: np.ndarray, where: str = "lexical index") -> np.ndarray:
        """The column of each id; an id this index does not hold is an error naming ``where``."""
        columns = np.searchsorted(self.ids, ids)
        inside = columns < len(self.ids)
        if not (inside.all() and np.array_equal(self.ids[columns], ids)):
            missing = np.asarray(ids)[~inside | (self.ids[np.minimum(columns, len(self.ids) - 1)] != ids)]
            raise DualencError(f"{where}: no entry for ids {missing[:5].tolist()}; rebuild the index")
        return columns

    def manifest_entry(self) -> dict[str, Any]:
        return {
            "type": "bm25",
            "files": [LEXICAL_FILE, VOCAB_FILE],
            "k1": self.k1,
            "b": self.b,
            "idf": IDF,
            "tokenizer": TOKENIZER,
            "count": self.count,
            "vocab_size": len(self.words),
            "postings": int(self.weights.nnz),
        }

    # --- files ------------------------------------------------------------------------

    def write(self, npz_path: Path, vocab_path: Path, generation: str) -> None:
        """Write the two files (at the paths given: an install stages them beside the index)."""
        with open(npz_path, "wb") as out:
            np.savez(
                out,
                format=np.array(LEXICAL_FORMAT, dtype=np.int64),
                generation=np.array(generation),
                ids=self.ids,
                indptr=self.weights.indptr.astype(np.int64, copy=False),
                indices=self.weights.indices.astype(np.int32, copy=False),
                weights=self.weights.data.astype(np.float64, copy=False),
                params=np.array([self.k1, self.b], dtype=np.float64),
            )
            out.flush()
            os.fsync(out.fileno())
        with open(vocab_path, "w", encoding="utf-8") as out:
            json.dump({"generation": generation, "words": self.words}, out, ensure_ascii=False)
            out.flush()
            os.fsync(out.fileno())

    @classmethod
    def read(cls, index_dir: Path, generation: str, count: int) -> LexicalIndex:
        """The lexical part of ``index_dir``, checked to be the build of ``generation`` with
        ``count`` documents; a missing, damaged or foreign file is an error naming it."""
        from scipy import sparse

        npz_path, vocab_path = Path(index_dir) / LEXICAL_FILE, Path(index_dir) / VOCAB_FILE
        arrays = _read_npz(npz_path)
        words = _read_vocab(vocab_path)
        foreign = (
            "belongs to another build than {manifest} (an interrupted build or update?); rebuild the index"
        )
        manifest = Path(index_dir) / "manifest.json"
        if arrays["generation"] != generation:
            raise DualencError(f"{npz_path}: " + foreign.format(manifest=manifest))
        if words["generation"] != generation:
            raise DualencError(f"{vocab_path}: " + foreign.format(manifest=manifest))
        ids, indptr, indices, data = arrays["ids"], arrays["indptr"], arrays["indices"], arrays["weights"]
        if len(ids) != count:
            raise DualencError(
                f"{npz_path}: holds {len(ids)} documents, but the manifest says {count}; rebuild the index"
            )
        if len(indptr) != len(words["words"]) + 1:
            raise DualencError(
                f"{npz_path}: holds {len(indptr) - 1} words, but {vocab_path} lists {len(words['words'])}; "
                "rebuild the index"
            )
        try:
            if len(ids) > 1 and not np.all(np.diff(ids) > 0):
                raise ValueError("ids do not ascend")
            weights = sparse.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, len(ids)))
            weights.check_format(full_check=True)
        except ValueError as exc:
            raise DualencError(f"{npz_path}: inconsistent arrays ({exc}); rebuild the index") from None
        if not np.isfinite(data).all():
            raise DualencError(f"{npz_path}: weights are not finite; rebuild the index")
        k1, b = (float(value) for value in arrays["params"])
        return cls(weights, ids, words["words"], k1, b)


def _chunk_postings(
    chunk: Sequence[str], row_of: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, counts, lengths): each word of ``chunk`` once per document that says it,
    with how often it does; rows are first-seen numbers in ``row_of`` (new words are added),
    columns the documents' places in the chunk; lengths the documents' word counts."""
    rows: list[int] = []
    chunk_lengths = np.empty(len(chunk), dtype=np.int64)
    for column, code in enumerate(chunk):
        words = code_words(code)
        chunk_lengths[column] = len(words)
        rows.extend(row_of.setdefault(word, len(row_of)) for word in words)
    columns = np.repeat(np.arange(len(chunk), dtype=np.int64), chunk_lengths)
    keys, counts = np.unique(np.asarray(rows, dtype=np.int64) * len(chunk) + columns, return_counts=True)
    return keys // len(chunk), keys % len(chunk), counts, chunk_lengths


def _bm25_weights(
    idf: np.ndarray, tf: np.ndarray, lengths: np.ndarray, average: float, k1: float, b: float
) -> np.ndarray:
    """idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)), in place in two arrays
    (``lengths`` and ``idf`` are overwritten), in a fixed order of operations: the weights are
    the same to the last bit however the postings are split."""
    norm = lengths
    norm *= b
    norm /= average
    norm += 1.0 - b
    norm *= k1
    norm += tf
    idf *= tf
    idf *= k1 + 1.0
    idf /= norm
    return idf


_NPZ_ARRAYS = {
    "format": (np.integer, 0),
    "generation": (np.str_, 0),
    "ids": (np.integer, 1),
    "indptr": (np.integer, 1),
    "indices": (np.integer, 1),
    "weights": (np.floating, 1),
    "params": (np.floating, 1),
}


def _read_npz(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DualencError(f"{path}: missing; {REBUILD}")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name, (kind, ndim) in _NPZ_ARRAYS.items():
                if name not in npz.files:
                    raise DualencError(f"{path}: has no {name!r} array; rebuild the index")
                try:
                    value = npz[name]
                except ValueError as exc:
                    if "allow_pickle" not in str(exc):
                        raise
                    raise DualencError(
                        f"{path}: {name!r} is an object array, which dualenc never unpickles; "
                        "rebuild the index"
                    ) from None
                if not np.issubdtype(value.dtype, kind) or value.ndim != ndim:
                    raise DualencError(
                        f"{path}: {name!r} is a {value.ndim}-d {value.dtype} array; rebuild the index"
                    )
                arrays[name] = value
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DualencError(
            f"{path}: unreadable lexical index, truncated or corrupt ({exc}); rebuild the index"
        ) from None
    if int(arrays["format"]) != LEXICAL_FORMAT:
        raise DualencError(
            f"{path}: lexical format {int(arrays['format'])}; this dualenc reads {LEXICAL_FORMAT}"
        )
    arrays["generation"] = str(arrays["generation"])
    if len(arrays["params"]) != 2:
        raise DualencError(f"{path}: 'params' must hold k1 and b; rebuild the index")
    return arrays


def _read_vocab(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DualencError(f"{path}: missing; {REBUILD}")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DualencError(f"{path}: not valid JSON ({exc}); rebuild the index") from None
    if (
        not isinstance(vocab, dict)
        or not isinstance(vocab.get("generation"), str)
        or not isinstance(vocab.get("words"), list)
        or not all(isinstance(word, str) for word in vocab["words"])
    ):
        raise DualencError(
            f"{path}: expected an object with 'generation' (a string) and 'words' (strings); "
            "rebuild the index"
        )
    return vocab


def top_columns(scores: np.ndarray, k: int, positive: bool = False) -> np.ndarray:
    """The columns of the ``k`` highest of one row of ``scores``, by score then column;
    ``positive``: only those above 0 (a document sharing no word with the query is no match)."""
    candidates = np.flatnonzero(scores > 0) if positive else np.arange(len(scores))
    if len(candidates) > k:
        kth = np.partition(scores[candidates], len(candidates) - k)[len(candidates) - k]
        candidates = candidates[scores[candidates] >= kth]
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order[:k]]
