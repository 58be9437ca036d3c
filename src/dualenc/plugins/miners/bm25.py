"""``bm25``: lexical hard negatives, as DPR mined them, with ``rank_bm25``'s BM25Okapi.

The codes (the training pairs', or those of ``dualenc mine --corpus``) are indexed once (the
corpus never changes during training) and every query is scored against all of them. Words
are ``dualenc.code_words``, the tokenizer of an index's lexical part too.
``BM25Okapi`` supplies the statistics (idf, lengths, k1, b); scoring goes through
``TermWeights``, the same formula over postings lists, because ``get_scores`` loops in
Python over every document for every query word (108 s for the 4,253 stdlib training pairs,
against about a second). The negatives do not depend on the model, so they are mined once,
before the first step, and saved with the checkpoints.
"""

from __future__ import annotations

import time
from collections import defaultdict

import attrs
import numpy as np

from dualenc import Register, at_least, at_most, code_words, hookimpl, one_of
from dualenc.plugins.miners.common import (
    RoundCounts,
    RoundMiner,
    RoundResult,
    check_window,
    duplicate_counts,
    sample_window,
)

SCORE_CHUNK = 1024


class TermWeights:
    """A ``BM25Okapi``'s term-document weights as postings: word -> (documents, weights).

    A query's scores are the sum of its words' postings, which is what ``get_scores``
    computes (words absent from a document add 0), at the cost of the postings touched.
    """

    def __init__(self, bm25):
        doc_len = np.asarray(bm25.doc_len, dtype=np.float64)
        documents: dict[str, list[int]] = defaultdict(list)
        frequencies: dict[str, list[int]] = defaultdict(list)
        for document, counts in enumerate(bm25.doc_freqs):
            for word, count in counts.items():
                documents[word].append(document)
                frequencies[word].append(count)
        k1, b = bm25.k1, bm25.b
        self.num_documents = len(doc_len)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for word, ids in documents.items():
            ids = np.asarray(ids, dtype=np.int64)
            tf = np.asarray(frequencies[word], dtype=np.float64)
            # get_scores' expression, term for term, so the sums round the same way
            weights = bm25.idf[word] * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len[ids] / bm25.avgdl)))
            self.postings[word] = (ids, weights)

    def scores(self, words: list[str]) -> np.ndarray:
        hits = [self.postings[word] for word in words if word in self.postings]
        if not hits:
            return np.zeros(self.num_documents)
        ids, weights = (np.concatenate(parts) for parts in zip(*hits, strict=True))
        return np.bincount(ids, weights=weights, minlength=self.num_documents)


@attrs.frozen
class BM25MinerOptions:
    num_negatives: int = attrs.field(default=4, validator=at_least(1))
    # ranks range_min <= rank < range_max of the BM25 ranking, after the positive's duplicates;
    # DPR took the very top lexical matches, so the window starts at 0
    range_min: int = attrs.field(default=0, validator=at_least(0))
    range_max: int = attrs.field(default=30, validator=[at_least(1), check_window])
    # among the candidates left: "random" draws num_negatives, "top" takes the best-ranked (DPR)
    sampling: str = attrs.field(default="random", validator=one_of("random", "top"))
    # also treat codes equal up to identifier names as clones of the positive
    normalise_identifiers: bool = False
    k1: float = attrs.field(default=1.5, validator=at_least(0))
    b: float = attrs.field(default=0.75, validator=[at_least(0), at_most(1)])
    seed: int = 0


class BM25Miner(RoundMiner):
    name = "bm25"

    def mine_round(self, encoder, corpus, candidates, rng) -> RoundResult:
        from rank_bm25 import BM25Okapi

        options = self.options
        num_pairs = len(corpus)
        started = time.perf_counter()
        bm25 = BM25Okapi([code_words(code) for code in candidates.codes], k1=options.k1, b=options.b)
        weights = TermWeights(bm25)
        index_seconds = time.perf_counter() - started

        started = time.perf_counter()
        depths = np.minimum(options.range_max + 1 + duplicate_counts(candidates), len(candidates))
        negatives = np.empty((num_pairs, options.num_negatives), dtype=np.int64)
        counts = RoundCounts()
        for start in range(0, num_pairs, SCORE_CHUNK):
            rows = np.arange(start, min(start + SCORE_CHUNK, num_pairs))
            candidate_ids = np.full((len(rows), int(depths[rows].max())), -1, dtype=np.int64)
            for position, row in enumerate(rows):
                ranked = self.ranked(weights.scores(code_words(corpus.queries[row])), depths[row])
                candidate_ids[position, : len(ranked)] = ranked
            negatives[rows] = sample_window(candidate_ids, rows, candidates, options, rng, counts)
        return RoundResult(
            negatives=negatives,
            counts=counts,
            timings={
                "mining/index_seconds": index_seconds,
                "mining/search_seconds": time.perf_counter() - started,
            },
            provenance={
                "index": {
                    "type": "rank_bm25.BM25Okapi",
                    "words": "identifier parts, lower case, and multi-part identifiers whole",
                }
            },
        )

    @staticmethod
    def ranked(scores: np.ndarray, depth: int) -> np.ndarray:
        """The ``depth`` best pair ids, by score then id, without zero scores: a code
        sharing no word with the query is not a lexical negative."""
        top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]
        return top[scores[top] > 0]


@hookimpl
def register_miners(register: Register):
    register(
        "bm25",
        BM25Miner,
        options=BM25MinerOptions,
        description="Lexical hard negatives from BM25 over code identifiers (mined once).",
    )
