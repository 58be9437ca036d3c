"""Index build and search: dualenc's build_index and Retriever at 10k and 100k codes.

At 10k: real code (standard-library pairs, plus functions of installed packages where the
stdlib has too few) encoded by the zero-shot all-MiniLM-L6-v2 at max_seq_len 128, through
``dualenc.core.index.build.build_index`` exactly as ``dualenc index build`` runs it. Build
throughput counts everything: reading, encoding, metadata, FAISS.

At 100k, encoding every code would take most of an hour on a small CPU, so the vectors are
SYNTHETIC: the 10k real code vectors and noisy copies of them (each copy: a real vector plus
Gaussian noise, renormalised to cosine ~0.8 with its original), which keeps the clusters of
real embeddings that decide how IVF behaves; uniform random vectors have none. They go
through the same build_index (a stand-in encoder hands out the precomputed vectors), so
metadata, FAISS add, IVF training and nprobe tuning are dualenc's own; the build
throughput there counts no encoding. Queries are always real: held-out stdlib docstring
summaries encoded by the model.

Latency: one query at a time, k=10: ``Retriever.search`` (encode + search + metadata),
``Retriever.search_vectors`` (search + metadata), and the bare FAISS search; and the same
two for hybrid search (``mode="hybrid"``: dense and BM25 candidates fused, the index's
lexical part), with lexical search alone; and hybrid over dense, p50 and p99, both end to
end (encode + search: what a user waits for) and search alone. Each query runs in every
mode in turn, so a busy machine's slow spells fall on all modes alike. The synthetic
codes' texts are the real codes they copy (each with a comment naming the copy), so BM25
meets real code's words. Recall@10:
the approximate index against exact inner-product search over the same vectors, by result
ids, with real queries. The held-out docstring summaries are split in two: every other one
is given to ``build_index`` as ``tune_queries`` (``dualenc index build --tune-queries``) for
the IVF variants tuned on queries, and recall is measured on the other half only. Each scale
has dualenc's default index (exact up to 50k vectors, IVF tuned on code vectors above), IVF
tuned on queries, and the other kind for comparison.

    python -m benchmarks.index_bench [--real 10000] [--synthetic 100000] [--queries 200]
        [--variants "100000 synthetic, default"] [--smoke]
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from benchmarks.common import (
    MAX_SEQ_LEN,
    TMP_DIR,
    argument_parser,
    code_pairs,
    machine_info,
    parse_arguments,
    percentile,
    print_table,
    read_jsonl,
    stdlib_pairs_dir,
    write_jsonl,
    write_results,
)

K = 10
WORK_DIR = TMP_DIR / "index-bench"
# per-dimension noise of the synthetic copies: cosine with the original ~ 1/sqrt(1 + 384 s^2) ~ 0.8
SYNTHETIC_NOISE = 0.038


class PrecomputedVectors(torch.nn.Module):
    """Stands in for the encoder while building an index of vectors computed beforehand.

    A text's only "token" is its row in the table and forward returns that row, so that
    build_index runs its whole path without encoding anything.
    """

    def __init__(self, texts: list[str], vectors: np.ndarray):
        super().__init__()
        self.table = torch.nn.Embedding.from_pretrained(torch.from_numpy(vectors), freeze=True)
        self.row_of = {text: row for row, text in enumerate(texts)}  # codes, or tuning queries
        self.dim = vectors.shape[1]
        self.pad_id = 0
        self.max_seq_len = 1

    def tokenize(self, texts, side):
        return [np.array([self.row_of[text]], dtype=np.int32) for text in texts]

    def forward(self, input_ids, attention_mask, side):
        return self.table(input_ids[:, 0])


def zero_shot_checkpoint(encoder) -> Path:
    """A dualenc encoder checkpoint of the untouched pretrained model (build_index wants one)."""
    from dualenc.core.checkpoint import save_encoder
    from dualenc.plugins.encoders.hf import HFOptions

    directory = TMP_DIR / "zero-shot-checkpoint"
    if not (directory / "encoder.json").exists():
        save_encoder(encoder, "hf", HFOptions(max_seq_len=MAX_SEQ_LEN), directory)
    return directory


def stored_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(faiss ids, vectors) of a dualenc index, exact or IVF, in the order FAISS holds them."""
    index = faiss.read_index(str(index_dir / "index.faiss"))
    if isinstance(index, faiss.IndexIDMap2):
        flat = faiss.downcast_index(index.index)
        return faiss.vector_to_array(index.id_map), flat.reconstruct_n(0, index.ntotal)
    ivf = faiss.extract_index_ivf(index)
    ids, vectors = [], []
    for list_number in range(ivf.nlist):
        size = ivf.invlists.list_size(list_number)
        if size:
            ids.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(list_number), size).copy())
            codes = faiss.rev_swig_ptr(ivf.invlists.get_codes(list_number), size * ivf.code_size)
            vectors.append(codes.view(np.float32).reshape(size, ivf.d).copy())
    return np.concatenate(ids), np.concatenate(vectors)


def synthetic_vectors(real: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``real`` followed by noisy, renormalised copies of random real rows, ``count`` rows in
    all; and the real row each row copies."""
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, len(real), size=count - len(real))
    copies = real[sources] + rng.normal(0.0, SYNTHETIC_NOISE, size=(len(sources), real.shape[1])).astype(
        np.float32
    )
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return np.concatenate([real, copies]).astype(np.float32), np.concatenate([np.arange(len(real)), sources])


def latencies_ms(functions: dict, items) -> dict:
    """p50 and p99 of each of ``functions`` over ``items``, in milliseconds. The functions take
    turns on each item, so that a busy machine's slow spells fall on all of them alike."""
    times: dict = {name: [] for name in functions}
    for item in items:
        for name, function in functions.items():
            started = time.perf_counter()
            function(item)
            times[name].append(1000 * (time.perf_counter() - started))
    return {
        name: {"p50": percentile(values, 50), "p99": percentile(values, 99), "n": len(values)}
        for name, values in times.items()
    }


def hybrid_over_dense(latency: dict) -> dict:
    """Hybrid latency over dense latency, p50 and p99, end to end and search alone."""
    return {
        what: {q: latency[f"hybrid_{what}"][q] / latency[what][q] for q in ("p50", "p99")}
        for what in ("encode_search", "search")
    }


def recall_at_k(index, vectors: np.ndarray, faiss_ids: np.ndarray, queries: np.ndarray) -> float:
    """Share of the exact top k (flat inner product over ``vectors``, row i stored under
    ``faiss_ids[i]``) that ``index`` returns, compared by id."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth_rows = exact.search(queries, K)
    _, found = index.search(queries, K)
    truth = faiss_ids[truth_rows]
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth.tolist(), found.tolist(), strict=True))
    return hits / (len(queries) * K)


def measure(
    variant: str,
    index_dir: Path,
    report,
    encoder,
    checkpoint: Path,
    queries: dict,
    timed: int,
    vectors_given: bool,
) -> dict:
    """Latencies (the first ``timed`` queries) and recall (all of them) of one built index.

    ``queries`` maps each query text to its vector; ``encoder`` is the real one, which
    encodes the queries whatever built the index; ``vectors_given``: the build encoded nothing.
    """
    from dualenc import Retriever

    texts, query_vectors = list(queries), np.stack(list(queries.values()))
    with Retriever.load(index_dir, checkpoint, encoder=encoder) as retriever:
        retriever.search(texts[:2], k=K)  # first calls pay one-time costs
        timed_functions = {
            "encode_search": lambda i: retriever.search([texts[i]], k=K, mode="dense"),
            "search": lambda i: retriever.search_vectors(query_vectors[i][None, :], k=K),
            "faiss_only": lambda i: retriever.index.search(query_vectors[i][None, :], K),
        }
        if retriever.lexical is not None:
            retriever.search(texts[:2], k=K, mode="hybrid")
            timed_functions |= {
                "hybrid_encode_search": lambda i: retriever.search([texts[i]], k=K, mode="hybrid"),
                "hybrid_search": lambda i: retriever.search_vectors(
                    query_vectors[i][None, :], k=K, queries=[texts[i]], mode="hybrid"
                ),
                "lexical_search": lambda i: retriever.search([texts[i]], k=K, mode="lexical"),
            }
        latency = latencies_ms(timed_functions, range(min(timed, len(texts))))
        manifest = retriever.manifest
        ids, vectors = stored_vectors(index_dir)
        recall = recall_at_k(retriever.index, vectors, ids, query_vectors)
    return {
        "variant": variant,
        "count": report.count,
        "index": manifest["index"]["faiss"],
        "params": manifest["index"]["params"],
        "build_seconds": report.seconds,
        "encode_seconds": report.encode_seconds,
        "build_codes_per_sec": report.count / report.seconds,
        "vectors_given": vectors_given,
        "latency_ms": latency,
        "hybrid_over_dense": hybrid_over_dense(latency) if "hybrid_search" in latency else None,
        "fusion": manifest.get("fusion", {}).get("method"),
        "lexical": manifest.get("lexical"),
        "recall_at_10": recall,
        "recall_queries": len(texts),
        "manifest_recall": manifest["recall"],
    }


def build_from_vectors(
    name: str,
    texts: list[str],
    vectors: np.ndarray,
    exact_threshold: int,
    checkpoint: Path,
    tune: tuple[Path, dict] | None,
):
    """build_index over ``texts`` whose vectors are given: (index dir, build report).
    ``tune``: the tuning query file and its queries' vectors, or None (tuned on code vectors)."""
    from dualenc.core.index.build import build_index
    from dualenc.core.index.options import IndexOptions

    corpus = write_jsonl(WORK_DIR / f"{name}.jsonl", [{"id": str(i), "code": t} for i, t in enumerate(texts)])
    index_dir = WORK_DIR / name
    if tune is not None:
        texts, vectors = texts + list(tune[1]), np.concatenate([vectors, np.stack(list(tune[1].values()))])
    report = build_index(
        corpus,
        index_dir,
        checkpoint,
        encoder=PrecomputedVectors(texts, vectors),
        options=IndexOptions(
            exact_threshold=exact_threshold, tune_queries=None if tune is None else str(tune[0])
        ),
        progress=False,
    )
    return index_dir, report


def main(argv: list[str] | None = None) -> dict:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--real", type=int, default=10_000, help="codes encoded for real")
    parser.add_argument("--synthetic", type=int, default=100_000, help="the larger scale (synthetic vectors)")
    parser.add_argument("--queries", type=int, default=200, help="queries timed one at a time")
    parser.add_argument(
        "--variants",
        default=None,
        help="only the variants whose name contains one of these ';'-separated strings "
        "(e.g. '100000 synthetic, default'); the real build always runs, the others need its vectors",
    )
    args = parse_arguments(parser, argv, real=200, synthetic=2_000, queries=20)
    from dualenc.core.encode import encode_texts
    from dualenc.core.index.build import build_index
    from dualenc.core.index.options import IndexOptions
    from dualenc.plugins.encoders.hf import HFEncoder, HFOptions

    machine = machine_info()
    encoder = HFEncoder(HFOptions(max_seq_len=MAX_SEQ_LEN)).eval()
    checkpoint = zero_shot_checkpoint(encoder)
    shutil.rmtree(WORK_DIR, ignore_errors=True)
    pairs, provenance = code_pairs(args.real)
    print(f"real corpus: {provenance}")
    val_queries = list(dict.fromkeys(pair["query"] for pair in read_jsonl(stdlib_pairs_dir() / "val.jsonl")))
    if args.smoke:  # encoding all ~480 takes most of a smoke run; a few tune and measure recall
        val_queries = val_queries[: 4 * args.queries]
    all_queries = dict(zip(val_queries, encode_texts(encoder, val_queries, "query", 128), strict=True))
    # every other query tunes the IVF variants "tuned on queries"; recall is measured on the rest
    tuning = {text: all_queries[text] for text in val_queries[0::2]}
    queries = {text: all_queries[text] for text in val_queries[1::2]}
    tune_file = write_jsonl(WORK_DIR / "tune-queries.jsonl", [{"query": text} for text in tuning])

    corpus = write_jsonl(
        WORK_DIR / "real.jsonl",
        [
            {"id": str(i), "code": p["code"], "path": p["path"], "symbol": p["symbol"]}
            for i, p in enumerate(pairs)
        ],
    )
    real_dir = WORK_DIR / "real"
    report = build_index(corpus, real_dir, checkpoint, encoder=encoder, progress=False)
    results = [
        measure(
            f"{args.real} real, default", real_dir, report, encoder, checkpoint, queries, args.queries, False
        )
    ]
    _, real_vectors = stored_vectors(real_dir)  # in corpus order: ids follow it in a fresh build
    codes = [p["code"] for p in pairs]
    synthetic, sources = synthetic_vectors(real_vectors, args.synthetic)
    # each copy's text is the code it copies, made distinct: BM25 meets real code's words
    synthetic_texts = [
        codes[source] if i < len(codes) else f"{codes[source]}\n# synthetic copy {i}"
        for i, source in enumerate(sources.tolist())
    ]
    wanted = [part.strip() for part in args.variants.split(";")] if args.variants else None
    default_threshold = IndexOptions().exact_threshold
    # the other kind of index at each scale, and the large scale, from precomputed vectors
    on_queries = (tune_file, tuning)
    for variant, texts, vectors, exact_threshold, tune in (
        (f"{args.real} real, IVF", codes, real_vectors, args.real // 10, None),
        (f"{args.real} real, IVF tuned on queries", codes, real_vectors, args.real // 10, on_queries),
        (f"{args.synthetic} synthetic, default", synthetic_texts, synthetic, default_threshold, None),
        (
            f"{args.synthetic} synthetic, IVF tuned on queries",
            synthetic_texts,
            synthetic,
            args.synthetic // 10,  # IVF at any size (at the full size the default is IVF too)
            on_queries,
        ),
        (f"{args.synthetic} synthetic, exact", synthetic_texts, synthetic, args.synthetic, None),
    ):
        if wanted is not None and not any(part in variant for part in wanted):
            continue
        name = variant.replace(" ", "-").replace(",", "")
        index_dir, report = build_from_vectors(name, texts, vectors, exact_threshold, checkpoint, tune)
        results.append(measure(variant, index_dir, report, encoder, checkpoint, queries, args.queries, True))
    shutil.rmtree(WORK_DIR, ignore_errors=True)

    print_table(
        f"Index build and search, k={K}, one query at a time",
        [
            "variant",
            "faiss index",
            "build codes/s",
            "encode+search p50/p99 ms",
            "search p50/p99 ms",
            "faiss p50 ms",
            "hybrid encode+search p50/p99 ms",
            "hybrid search p50/p99 ms",
            "lexical p50/p99 ms",
            "hybrid/dense encode+search p50/p99",
            "hybrid/dense search p50/p99",
            "recall@10 real queries",
            "recall@10 at build",
            "tuned on",
        ],
        [
            [
                r["variant"],
                r["index"] + (f" nprobe={r['params']['nprobe']}" if "nprobe" in r["params"] else ""),
                f"{r['build_codes_per_sec']:,.0f}" + (" (vectors given)" if r["vectors_given"] else ""),
                "{p50:.2f} / {p99:.2f}".format(**r["latency_ms"]["encode_search"]),
                "{p50:.3f} / {p99:.3f}".format(**r["latency_ms"]["search"]),
                r["latency_ms"]["faiss_only"]["p50"],
                *(
                    "{p50:.2f} / {p99:.2f}".format(**r["latency_ms"][key]) if key in r["latency_ms"] else "-"
                    for key in ("hybrid_encode_search", "hybrid_search", "lexical_search")
                ),
                *(
                    "{p50:.2f}x / {p99:.2f}x".format(**r["hybrid_over_dense"][key])
                    if r["hybrid_over_dense"]
                    else "-"
                    for key in ("encode_search", "search")
                ),
                r["recall_at_10"],
                r["manifest_recall"]["value"],
                r["manifest_recall"].get("tuned_on", "-"),
            ]
            for r in results
        ],
        smoke=args.smoke,
    )
    print(
        f"SYNTHETIC: the {args.synthetic:,} vectors are the {args.real:,} real code vectors plus noisy "
        "copies (cosine ~0.8 to a real vector); queries are real. 'vectors given': build time without "
        "encoding. recall@10: the index against exact search over the same vectors, with real held-out "
        "queries (the half not used for tuning); 'at build': what build_index measured when it tuned nprobe, "
        "on corpus code vectors or on the other half of the queries ('tuned on'). hybrid: dense and BM25 "
        "top-100 candidates fused (the index's fusion); 'search' columns take the query vector as given; "
        "'encode+search' is what a user waits for. Each query is timed in every mode in turn, so the "
        "hybrid/dense ratios compare like with like on a busy machine."
    )
    payload = {
        "settings": {
            "model": "all-MiniLM-L6-v2 zero-shot, max_seq_len 128",
            "real_corpus": provenance,
            "synthetic": f"{args.synthetic} vectors: the {args.real} real code vectors + noisy copies "
            f"(per-dimension noise {SYNTHETIC_NOISE}, renormalised: cosine ~0.8 with the original)",
            "latency_queries": f"the first {args.queries} distinct held-out stdlib docstring summaries, "
            f"one at a time, k={K}",
            "recall_queries": f"{len(queries)} distinct held-out stdlib docstring summaries (the odd ones)",
            "tune_queries": f"{len(tuning)} other held-out docstring summaries (the even ones), for the "
            "variants tuned on queries",
            "build": "dualenc.core.index.build.build_index, IndexOptions defaults except exact_threshold "
            "for the non-default variants",
        },
        "results": results,
    }
    write_results("index_bench", args, payload, machine)
    return payload


if __name__ == "__main__":
    main()
