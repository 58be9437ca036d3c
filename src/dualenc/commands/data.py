"""``dualenc data``: build training pairs from source trees."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import click

from dualenc.core.data.extract import (
    DOCSTRING_MODES,
    SPLIT_UNITS,
    ExtractOptions,
    ExtractStats,
    extract_pairs,
)
from dualenc.core.data.packages import site_packages_roots
from dualenc.core.data.views import QUERY_VIEWS

# the defaults shown and used are the options class's
DEFAULTS = attrs.fields(ExtractOptions)
ROOTS_SHOWN = 15


def _views(ctx, param, value: str) -> tuple[str, ...]:
    views = tuple(view.strip() for view in value.split(",") if view.strip())
    unknown = [view for view in views if view not in QUERY_VIEWS]
    if unknown:
        raise click.BadParameter(
            f"unknown view {unknown[0]!r}; views are: {', '.join(QUERY_VIEWS)}", ctx, param
        )
    if not views or len(set(views)) < len(views):
        raise click.BadParameter(f"give distinct views among {', '.join(QUERY_VIEWS)}", ctx, param)
    return views


@click.group()
def data():
    """Build and inspect training data."""


@data.command("extract")
@click.argument("sources", metavar="[SRC]...", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for train.jsonl, val.jsonl (heldout.jsonl) and stats.json.",
)
@click.option(
    "--site-packages",
    "site_packages",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Every top-level package and module in this site-packages folder (or virtualenv) is a "
    "root, after the SRC roots, by name. Repeatable.",
)
@click.option(
    "--split-by",
    type=click.Choice(SPLIT_UNITS),
    default=DEFAULTS.split_by.default,
    show_default=True,
    help="What moves between train and validation as a whole: a source file or a top-level package.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Do not read top-level packages matching GLOB. Repeatable.",
)
@click.option(
    "--holdout",
    multiple=True,
    metavar="GLOB",
    help="Pairs of top-level packages matching GLOB go to heldout.jsonl only. Repeatable.",
)
@click.option(
    "--query-views",
    default=",".join(DEFAULTS.query_views.default),
    show_default=True,
    callback=_views,
    help=f"Comma-separated queries per function, a pair each: {', '.join(QUERY_VIEWS)}.",
)
@click.option(
    "--docstring",
    "docstring",
    type=click.Choice(DOCSTRING_MODES),
    default=None,
    help="What the code keeps of its docstring: strip it (default), keep it, or keep its body "
    "(all but the summary, which is the query).",
)
@click.option("--keep-docstring", is_flag=True, help="Same as --docstring keep.")
@click.option(
    "--seed", default=DEFAULTS.seed.default, show_default=True, help="Seed of the train/validation split."
)
@click.option(
    "--val-fraction",
    default=DEFAULTS.val_fraction.default,
    show_default=True,
    type=click.FloatRange(0.0, 0.9),
    help="Share of pairs for validation; whole files (or packages) move together.",
)
@click.option(
    "--min-lines",
    default=DEFAULTS.min_lines.default,
    show_default=True,
    type=click.IntRange(min=1),
    help="Skip functions with fewer lines of code (docstring, blank and comment lines not counted).",
)
@click.option(
    "--workers",
    default=os.cpu_count() or 1,
    show_default="CPU count",
    type=click.IntRange(min=1),
    help="Processes reading roots in parallel; the output is the same for any number.",
)
def data_extract(
    sources,
    out_dir,
    site_packages,
    split_by,
    exclude,
    holdout,
    query_views,
    docstring,
    keep_docstring,
    seed,
    val_fraction,
    min_lines,
    workers,
):
    """Query/code pairs from the Python functions under SRC (folders or files).

    The query is the docstring's first paragraph, cleaned of markup; the code is the
    function without its docstring. Tests, vendored and generated code are skipped, codes
    seen in an earlier root are dropped, and pairs are split into train and validation by
    source file or by package.
    """
    if keep_docstring and docstring not in (None, "keep"):
        raise click.UsageError(f"--keep-docstring contradicts --docstring {docstring}")
    if not sources and not site_packages:
        raise click.UsageError("give a SRC folder or file, or --site-packages DIR")
    roots = list(sources) + [root for directory in site_packages for root in site_packages_roots(directory)]
    options = ExtractOptions(
        min_lines=min_lines,
        docstring="keep" if keep_docstring else docstring or DEFAULTS.docstring.default,
        query_views=query_views,
        split_by=split_by,
        exclude=exclude,
        holdout=holdout,
        val_fraction=val_fraction,
        seed=seed,
    )
    stats = extract_pairs(roots, out_dir, options, workers=workers)
    _print_summary(stats, out_dir)


def _print_summary(stats: ExtractStats, out_dir: Path) -> None:
    unparsable = stats.skipped_files.get("unparsable", 0)
    click.echo(
        f"read {stats.files_read} files ({unparsable} unparsable) in {stats.seconds:.1f}s: "
        f"{stats.functions_seen} functions, {stats.pairs_kept} pairs kept"
    )
    skipped = ", ".join(f"{reason} {count}" for reason, count in stats.skipped_functions.items())
    click.echo(f"skipped functions: {skipped or 'none'}")
    if len(stats.views) > 1:
        click.echo("views: " + ", ".join(f"{view} {count}" for view, count in stats.views.items()))
    if stats.excluded_packages:
        click.echo(f"excluded: {', '.join(stats.excluded_packages)}")
    if len(stats.roots) > 1:
        _print_roots(stats.roots)
    unit = "packages" if stats.split_by == "package" else "files"
    sides = [("train", stats.train_pairs, stats.train_files), ("val", stats.val_pairs, stats.val_files)]
    for side, pairs, files in sides:
        where = f"{len(stats.packages[side])} packages" if unit == "packages" else f"{files} files"
        click.echo(f"{side + ':':6} {pairs} pairs from {where} -> {out_dir / (side + '.jsonl')}")
    if (out_dir / "heldout.jsonl").exists():
        held = stats.packages["heldout"]
        click.echo(
            f"heldout: {stats.heldout_pairs} pairs from {len(held)} packages ({', '.join(held)})"
            f" -> {out_dir / 'heldout.jsonl'}"
        )
    shared = ", ".join(
        f"{count} with a {side} query" for side, count in stats.shared_queries.items() if count
    )
    if shared:
        click.echo(f"train pairs sharing a query text (kept): {shared}")


def _print_roots(roots: dict[str, dict[str, int]]) -> None:
    """The roots as a table, those with most pairs first."""
    ordered = sorted(roots.items(), key=lambda item: (-item[1]["pairs_kept"], item[0]))
    width = max(len(name) for name, _ in ordered[:ROOTS_SHOWN])
    columns = ("files_read", "pairs_kept", "duplicate_code", "train_pairs", "val_pairs", "heldout_pairs")
    headers = ("files", "pairs", "dups", "train", "val", "heldout")
    click.echo(f"{'root':<{width}} " + " ".join(f"{header:>7}" for header in headers))
    for name, row in ordered[:ROOTS_SHOWN]:
        click.echo(f"{name:<{width}} " + " ".join(f"{row[column]:>7}" for column in columns))
    if len(ordered) > ROOTS_SHOWN:
        click.echo(f"... and {len(ordered) - ROOTS_SHOWN} more roots")
