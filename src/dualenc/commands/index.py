"""``dualenc index build``: encode a code corpus into an index directory."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from dualenc.cli_options import current_catalog
from dualenc.core.config import RetrievalConfig
from dualenc.core.index.options import IndexOptions

# the command's defaults are those of IndexOptions
INDEX_OPTIONS = attrs.fields(IndexOptions)
# under torchrun the other ranks wait while rank 0 reads the whole corpus into the metadata
# store before the encoding starts: torch's default process group timeout
DIST_TIMEOUT_S = 1800


@click.group()
def index():
    """Build and update FAISS indices of code."""


@index.command("build")
@click.option(
    "--encoder-checkpoint",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The encoder checkpoint directory (encoder.json, model.safetensors).",
)
@click.option(
    "--code-corpus",
    required=True,
    type=click.Path(path_type=Path),
    help="JSONL of code records (code; optional path, symbol, line, id), or a folder or .py "
    "file of Python sources whose functions are indexed.",
)
@click.option(
    "--output-dir",
    default=RetrievalConfig().faiss_index,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where index.faiss, meta.sqlite and manifest.json go.",
)
@click.option("--update", is_flag=True, help="Encode only new and changed records of an existing index.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index.")
@click.option(
    "--exact-threshold",
    type=click.IntRange(min=1),
    default=INDEX_OPTIONS.exact_threshold.default,
    show_default=True,
    help="Up to this many vectors the index is exact; above it IVF, tuned to the recall target.",
)
@click.option(
    "--compress-threshold",
    type=click.IntRange(min=1),
    default=INDEX_OPTIONS.compress_threshold.default,
    show_default=True,
    help="Above this many vectors the index is IVF-PQ (a few dozen bytes a vector in memory), its "
    "shortlist re-ranked from fp16 vectors on disk, tuned to the recall target.",
)
@click.option(
    "--pq-bytes",
    type=click.IntRange(min=1),
    help="Bytes of a vector's PQ code in a compressed index; it must divide the dimension "
    "[default: one per 8 dimensions].",
)
@click.option(
    "--recall-target",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=INDEX_OPTIONS.recall_target.default,
    show_default=True,
    help="Recall@10 against exact search that an approximate index must reach.",
)
@click.option(
    "--tune-queries",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Natural-language queries (JSONL with a 'query' field, or one per line), e.g. a validation "
    "file, to tune an approximate index on. Without them corpus code vectors stand in, and real "
    "queries then see a lower recall than the target. JSONL pairs that also have a 'code' field "
    "(val.jsonl) choose hybrid search's fusion too: the best MRR of RRF and interpolation weights "
    "0, 0.1, ..., 1 on the pairs whose code is in the corpus.",
)
@click.option(
    "--no-lexical",
    is_flag=True,
    help="Leave out the lexical (BM25) part: dense search only.",
)
@click.option(
    "--chunk-size", type=click.IntRange(min=1), default=INDEX_OPTIONS.chunk_size.default, show_default=True
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=INDEX_OPTIONS.batch_size.default, show_default=True
)
def build(
    encoder_checkpoint: Path,
    code_corpus: Path,
    output_dir: Path,
    update: bool,
    overwrite: bool,
    exact_threshold: int,
    compress_threshold: int,
    pq_bytes: int | None,
    recall_target: float,
    tune_queries: Path | None,
    no_lexical: bool,
    chunk_size: int,
    batch_size: int,
):
    """Encode a code corpus and write a searchable index.

    Under torchrun (torchrun --nproc-per-node N -m dualenc index build ...) the ranks share
    the encoding and rank 0 writes the index. A killed build, run again with the same inputs,
    encodes only what it had not finished.
    """
    from dualenc.core import distributed
    from dualenc.core.index.build import build_index

    options = IndexOptions(
        exact_threshold=exact_threshold,
        compress_threshold=compress_threshold,
        pq_bytes=pq_bytes,
        recall_target=recall_target,
        tune_queries=None if tune_queries is None else str(tune_queries),
        lexical=not no_lexical,
        chunk_size=chunk_size,
        batch_size=batch_size,
    )
    with distributed.session("auto", DIST_TIMEOUT_S):
        report = build_index(
            code_corpus,
            output_dir,
            encoder_checkpoint,
            catalog=current_catalog(),
            update=update,
            overwrite=overwrite,
            options=options,
        )
    if report is None:  # another rank than 0 of a torchrun build: rank 0 reports
        return
    index_info, recall = report.manifest["index"], report.manifest["recall"]
    params = "".join(f", {name}={value}" for name, value in index_info["params"].items())
    if "queries" in recall:
        source = "queries" if tune_queries else "corpus vectors (pass --tune-queries for real queries)"
        recall_text = f"recall@{recall['k']} {recall['value']:.3f} on {recall['queries']} {source}"
    else:
        recall_text = "exact"
    fresh = report.encoded - report.resumed
    rate = fresh / report.encode_seconds if report.encode_seconds else 0.0
    resumed = f" ({report.resumed} by an interrupted build)" if report.resumed else ""
    sizes = index_info["bytes_per_vector"]
    on_disk = f", {sizes['on_disk']:g} on disk" if sizes["on_disk"] else ""
    click.echo(
        f"{report.output_dir}: {report.count} records ({index_info['type']}{params}; {recall_text}; "
        f"{sizes['in_memory']:g} bytes a vector in memory{on_disk}); "
        f"{report.encoded} encoded{resumed}, {report.unchanged} unchanged, {report.removed} removed "
        f"in {report.seconds:.1f} s ({rate:.0f} codes/s encoding)"
    )
    if "lexical" in report.manifest:
        from dualenc.core.fusion import Fusion

        lexical, fusion = report.manifest["lexical"], report.manifest["fusion"]
        chosen = Fusion.from_manifest(fusion, "manifest").describe()
        source = "tuned on --tune-queries pairs" if "mrr_per_setting" in fusion else "default"
        click.echo(
            f"lexical: BM25 (k1={lexical['k1']:g}, b={lexical['b']:g}) over {lexical['vocab_size']} words; "
            f"hybrid fusion {chosen} ({source})"
        )
