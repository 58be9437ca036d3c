"""``dualenc index build`` and ``dualenc search``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from dualenc.core.config import RetrievalConfig

DEFAULT_INDEX_DIR = RetrievalConfig().faiss_index
DEF_LINE = re.compile(r"(async\s+)?def\s")


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
    default=DEFAULT_INDEX_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where index.faiss, meta.sqlite and manifest.json go.",
)
@click.option("--update", is_flag=True, help="Encode only new and changed records of an existing index.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index.")
@click.option(
    "--exact-threshold",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Up to this many vectors the index is exact; above it IVF, tuned to the recall target.",
)
@click.option(
    "--recall-target",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.95,
    show_default=True,
    help="Recall@10 against exact search that an approximate index must reach.",
)
@click.option(
    "--tune-queries",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Natural-language queries (JSONL with a 'query' field, or one per line), e.g. a validation "
    "file, to tune an approximate index on. Without them corpus code vectors stand in, and real "
    "queries then see a lower recall than the target.",
)
@click.option("--chunk-size", type=click.IntRange(min=1), default=2048, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
def build(
    encoder_checkpoint: Path,
    code_corpus: Path,
    output_dir: Path,
    update: bool,
    overwrite: bool,
    exact_threshold: int,
    recall_target: float,
    tune_queries: Path | None,
    chunk_size: int,
    batch_size: int,
):
    """Encode a code corpus and write a searchable index."""
    from dualenc.core.index import IndexOptions, build_index

    options = IndexOptions(
        exact_threshold=exact_threshold,
        recall_target=recall_target,
        tune_queries=None if tune_queries is None else str(tune_queries),
        chunk_size=chunk_size,
        batch_size=batch_size,
    )
    report = build_index(
        code_corpus, output_dir, encoder_checkpoint, update=update, overwrite=overwrite, options=options
    )
    index_info, recall = report.manifest["index"], report.manifest["recall"]
    params = "".join(f", {name}={value}" for name, value in index_info["params"].items())
    if "queries" in recall:
        source = "queries" if tune_queries else "corpus vectors (pass --tune-queries for real queries)"
        recall_text = f"recall@{recall['k']} {recall['value']:.3f} on {recall['queries']} {source}"
    else:
        recall_text = "exact"
    rate = report.encoded / report.encode_seconds if report.encode_seconds else 0.0
    click.echo(
        f"{report.output_dir}: {report.count} records ({index_info['type']}{params}; {recall_text}); "
        f"{report.encoded} encoded, {report.unchanged} unchanged, {report.removed} removed "
        f"in {report.seconds:.1f} s ({rate:.0f} codes/s encoding)"
    )


@click.command()
@click.argument("queries", nargs=-1, required=True)
@click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="An index directory written by dualenc index build.",
)
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--encoder-checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Use this copy of the index's encoder instead of the path its manifest records.",
)
@click.option(
    "--max-lines",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Lines of code shown per hit; 0 shows all.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines.")
def search(
    queries: tuple[str, ...],
    index_dir: Path,
    k: int,
    encoder_checkpoint: Path | None,
    max_lines: int,
    as_json: bool,
):
    """Search an index with natural-language QUERIES."""
    from dualenc.core.index import Retriever

    with Retriever.load(index_dir, encoder_checkpoint) as retriever:
        results = retriever.search(list(queries), k=k)
    if as_json:
        document = [
            {"query": query, "hits": [hit.to_dict() for hit in hits]}
            for query, hits in zip(queries, results, strict=True)
        ]
        click.echo(json.dumps(document, indent=2))
        return
    show = _rich_printer() or _plain_printer
    for number, (query, hits) in enumerate(zip(queries, results, strict=True)):
        if len(queries) > 1:
            if number:
                click.echo()
            click.echo(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            location = f"{hit.path or '-'}:{hit.line}" if hit.line is not None else hit.path or "-"
            click.echo(f"{rank:>3}  {hit.score:.4f}  {location}  {hit.symbol or hit.id}")
            code, hidden = _clip(hit.code, max_lines)
            show(code, _first_line_number(hit.code, hit.line))
            if hidden:
                click.echo(f"     ... {hidden} more line{'s' if hidden > 1 else ''}")


def _clip(code: str, max_lines: int) -> tuple[str, int]:
    """The first ``max_lines`` lines (all when 0), and how many were left out."""
    lines = code.rstrip("\n").split("\n")
    if not max_lines or len(lines) <= max_lines:
        return code, 0
    return "\n".join(lines[:max_lines]), len(lines) - max_lines


def _first_line_number(code: str, line: int | None) -> int:
    """The line number of the code's first line: extracted records give the ``def`` line,
    and their code starts with the decorators above it."""
    if line is None:
        return 1
    lines = code.split("\n")
    decorators = next((n for n, text in enumerate(lines) if DEF_LINE.match(text)), 0)
    return max(1, line - decorators)


def _plain_printer(code: str, first_line: int) -> None:
    click.echo("\n".join(f"     {line}" for line in code.split("\n")))


def _rich_printer():
    """A printer that highlights code with ``rich``, or None when it is not installed."""
    try:
        from rich.console import Console
        from rich.padding import Padding
        from rich.syntax import Syntax
    except ImportError:
        return None
    console = Console()

    def show(code: str, first_line: int) -> None:
        syntax = Syntax(code, "python", line_numbers=True, start_line=first_line, theme="ansi_dark")
        console.print(Padding(syntax, (0, 0, 0, 5), expand=False))

    return show
