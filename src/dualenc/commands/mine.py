"""``dualenc mine``: ``dualenc.mine`` with the command line's config options.

One round of the config's miner, written as training rows with a manifest beside them
(``dualenc.core.mine`` runs it).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import click

from dualenc.cli_options import config_option, current_catalog, plugin_option, set_option


@click.command("mine")
@config_option
@plugin_option
@set_option
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="The encoder checkpoint to mine with (as --resume-from loads it). Without it, the "
    "config's encoder as a new run starts: a pretrained model (hf), or random weights.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="The JSONL file of training rows to write; the manifest goes beside it.",
)
@click.option(
    "--corpus",
    type=click.Path(path_type=Path),
    default=None,
    help="Draw the negatives from the codes of this JSONL file instead of the training pairs' own.",
)
@click.option(
    "--corpus-field", default="code", show_default=True, help="The field of --corpus holding the code."
)
@click.option("--seed", type=int, default=None, help="The round's seed (default: the config's miner.seed).")
def mine(config_path, plugins, sets, checkpoint, out, corpus, corpus_field, seed):
    """Mine hard negatives for the training pairs once and write them as training rows."""
    from dualenc.api import mine_run

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = mine_run(
        config_path,
        catalog=current_catalog(),
        overrides=list(sets),
        selection=list(plugins),
        out=out,
        checkpoint=checkpoint,
        corpus=corpus,
        corpus_field=corpus_field,
        seed=seed,
        command=command_line(click.get_current_context()),
    )
    click.echo(
        f"{report.out}: {report.rows} rows, {report.negatives} negatives "
        f"({report.short} rows short of {report.num_negatives}); manifest {report.manifest}"
    )


def command_line(ctx: click.Context) -> str:
    """The invocation, every given option spelled out, as a shell would take it back."""
    words = ["dualenc", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == ():
            continue
        for item in value if param.multiple else [value]:
            words += [param.opts[0], str(item)]
    return shlex.join(words)
