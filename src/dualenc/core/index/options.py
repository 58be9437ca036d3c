"""``IndexOptions``: how ``build_index`` builds. Apart from faiss and torch, so that the CLI
takes its defaults from here without loading them."""

from __future__ import annotations

import attrs

from dualenc.validators import at_least, at_most, greater_than


@attrs.frozen
class IndexOptions:
    # up to this many vectors the index is exact; above it IVF with tuned nprobe
    exact_threshold: int = attrs.field(default=50_000, validator=at_least(1))
    # above this many vectors IVF-PQ (pq_bytes a vector in memory) finds a shortlist that is
    # re-ranked from fp16 vectors on disk; at 1M vectors of 384 dimensions IVF-flat holds 1.5 GB
    compress_threshold: int = attrs.field(default=500_000, validator=at_least(1))
    # bytes of a vector's PQ code (it must divide the dimension); None: one per 8 dimensions
    pq_bytes: int | None = attrs.field(default=None, validator=attrs.validators.optional(at_least(1)))
    # recall@10 an approximate index must reach against exact search
    recall_target: float = attrs.field(default=0.95, validator=[greater_than(0.0), at_most(1.0)])
    # queries used when measuring recall
    recall_queries: int = attrs.field(default=1000, validator=at_least(1))
    # natural-language queries to tune nprobe on: JSONL with a "query" field, or one per line;
    # JSONL pairs with a "code" field too also choose hybrid search's fusion.
    # Without them corpus code vectors stand in, and those sit close to their own IVF list:
    # tuned on them, real queries lost recall (0.95 -> 0.91 at 4k codes, 0.98 -> 0.42 at 100k)
    tune_queries: str | None = None
    # a BM25 index of the records' code words beside the vectors, for lexical and hybrid
    # search (dualenc.core.lexical); k1 and b are Lucene's defaults
    lexical: bool = True
    bm25_k1: float = attrs.field(default=1.2, validator=at_least(0.0))
    bm25_b: float = attrs.field(default=0.75, validator=[at_least(0.0), at_most(1.0)])
    # records read, encoded and added per step: memory is the index plus one chunk
    chunk_size: int = attrs.field(default=2048, validator=at_least(1))
    batch_size: int = attrs.field(default=128, validator=at_least(1))
    seed: int = 0
