"""``dualenc data``: build training pairs from source trees."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from dualenc.core.data.extract import ExtractOptions, extract_pairs

# the defaults shown and used are the options class's
DEFAULTS = attrs.fields(ExtractOptions)


@click.group()
def data():
    """Build and inspect training data."""


@data.command("extract")
@click.argument(
    "sources", metavar="SRC...", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for train.jsonl, val.jsonl and stats.json.",
)
@click.option(
    "--seed", default=DEFAULTS.seed.default, show_default=True, help="Seed of the train/validation split."
)
@click.option(
    "--val-fraction",
    default=DEFAULTS.val_fraction.default,
    show_default=True,
    type=click.FloatRange(0.0, 0.9),
    help="Share of pairs for validation; whole source files move together.",
)
@click.option(
    "--min-lines",
    default=DEFAULTS.min_lines.default,
    show_default=True,
    type=click.IntRange(min=1),
    help="Skip functions with fewer lines of code (docstring, blank and comment lines not counted).",
)
@click.option("--keep-docstring", is_flag=True, help="Leave the docstring in the code.")
def data_extract(sources, out_dir, seed, val_fraction, min_lines, keep_docstring):
    """Query/code pairs from the Python functions under SRC (folders or files).

    The query is the docstring's first paragraph, cleaned of markup; the code is the
    function without its docstring. Tests, vendored and generated code are skipped, and
    pairs are split into train and validation by source file.
    """
    options = ExtractOptions(
        min_lines=min_lines, keep_docstring=keep_docstring, val_fraction=val_fraction, seed=seed
    )
    stats = extract_pairs(list(sources), out_dir, options)
    unparsable = stats.skipped_files.get("unparsable", 0)
    click.echo(
        f"read {stats.files_read} files ({unparsable} unparsable) in {stats.seconds:.1f}s: "
        f"{stats.functions_seen} functions, {stats.pairs_kept} pairs kept"
    )
    skipped = ", ".join(f"{reason} {count}" for reason, count in stats.skipped_functions.items())
    click.echo(f"skipped functions: {skipped or 'none'}")
    click.echo(
        f"train: {stats.train_pairs} pairs from {stats.train_files} files -> {out_dir / 'train.jsonl'}\n"
        f"val:   {stats.val_pairs} pairs from {stats.val_files} files -> {out_dir / 'val.jsonl'}"
    )
