"""``dualenc search``: natural-language queries against an index, hits printed with their code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from dualenc.cli_options import current_catalog
from dualenc.core.config import RetrievalConfig

DEF_LINE = re.compile(r"(async\s+)?def\s")


@click.command()
@click.argument("queries", nargs=-1, required=True)
@click.option(
    "--index",
    "index_dir",
    default=RetrievalConfig().faiss_index,
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
@click.option(
    "--mode",
    type=click.Choice(["dense", "lexical", "hybrid"]),
    default=None,
    help="dense (the encoder), lexical (BM25 over code words) or hybrid (both, fused) "
    "[default: hybrid when the index has a lexical part, else dense].",
)
@click.option(
    "--fusion",
    type=click.Choice(["interpolate", "rrf"]),
    default=None,
    help="How hybrid search fuses the two rankings [default: the one the index's manifest records].",
)
@click.option(
    "--weight",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="The dense score's weight in an interpolation, 0 to 1 (implies --fusion interpolate).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document for machines.")
def search(
    queries: tuple[str, ...],
    index_dir: Path,
    k: int,
    encoder_checkpoint: Path | None,
    max_lines: int,
    mode: str | None,
    fusion: str | None,
    weight: float | None,
    as_json: bool,
):
    """Search an index with natural-language QUERIES."""
    from dualenc.retriever import Retriever, check_queries

    if weight is not None and fusion == "rrf":
        raise click.UsageError("--weight: applies to --fusion interpolate only")
    if (fusion is not None or weight is not None) and mode not in (None, "hybrid"):
        raise click.UsageError(f"--fusion and --weight apply to hybrid search, not to --mode {mode}")
    check_queries(queries)  # before the encoder is loaded
    with Retriever.load(index_dir, encoder_checkpoint, catalog=current_catalog()) as retriever:
        results = retriever.search(list(queries), k=k, mode=mode, fusion=fusion, weight=weight)
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
