"""Query and code prompts (prefixes) and per-side max lengths, for both built-in encoders.

A prompt is prepended to each text before tokenizing, as sentence-transformers does
(``prompt + text``, tokenized together, so special tokens such as [CLS] come before it).
Prompts are stored as sentence-transformers stores them: the ``prompts`` mapping of a folder's
``config_sentence_transformers.json``, the query's under "query" and the code's under
"document" (read also from "passage", "corpus" or "code"). An option left at None takes the
prompt of the folder the encoder is built from: a checkpoint's own, which ``save`` records
there, or a base model's, so a checkpoint keeps its prompts after its base model is gone.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import attrs

from dualenc import SIDES, DualencError, at_least

log = logging.getLogger(__name__)

ST_CONFIG_FILE = "config_sentence_transformers.json"
# the prompt names that hold each side's prompt, in the order they are looked up: those
# sentence-transformers' encode_query / encode_document use, then dualenc's own "code"
PROMPT_NAMES = {"query": ("query",), "code": ("document", "passage", "corpus", "code")}
# the name each side's prompt is written under
WRITTEN_NAME = {"query": "query", "code": "document"}


def _within_max_seq_len(instance, attribute, value):
    if value is not None and value > instance.max_seq_len:
        raise ValueError(f"must be <= max_seq_len ({instance.max_seq_len}) (got {value})")


def max_len_field():
    """An options field for one side's max length: None (max_seq_len) or 2..max_seq_len."""
    return attrs.field(default=None, validator=[at_least(2), _within_max_seq_len])


def side_max_lengths(options) -> dict[str, int]:
    lengths = {side: getattr(options, f"{side}_max_len") for side in SIDES}
    return {side: options.max_seq_len if n is None else n for side, n in lengths.items()}


def read_st_config(folder: Path) -> dict:
    """The folder's config_sentence_transformers.json, {} when it has none."""
    path = Path(folder) / ST_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DualencError(f"{path}: not valid JSON ({exc})") from None
    prompts = (config.get("prompts") or {}) if isinstance(config, dict) else None
    # a null prompt is one sentence-transformers leaves unset
    if not isinstance(prompts, dict) or not all(p is None or isinstance(p, str) for p in prompts.values()):
        raise DualencError(f"{path}: expected a JSON object whose 'prompts' maps names to strings")
    return config


def folder_prompts(config: dict) -> dict[str, str]:
    """The query and code prompts of a config_sentence_transformers.json; a side without one is
    absent."""
    prompts = {k: v for k, v in (config.get("prompts") or {}).items() if v is not None}
    found = {}
    for side, names in PROMPT_NAMES.items():
        name = next((n for n in names if n in prompts), None)
        if name is not None:
            found[side] = prompts[name]
    return found


def resolve_prompts(
    options, config: dict, folder: Path | None = None, checkpoint: bool = False
) -> dict[str, str]:
    """Each side's prompt: the option when set, else the folder's, else "". A set option that
    differs from the folder's prompt is logged: on a checkpoint it changes what the trained
    weights see (a resume may do that; training adapts to the new prompt)."""
    recorded = folder_prompts(config)
    prompts = {}
    for side in SIDES:
        option = getattr(options, f"{side}_prefix")
        prompts[side] = recorded.get(side, "") if option is None else option
        if option is not None and side in recorded and recorded[side] != option:
            source = "the checkpoint was trained with" if checkpoint else "replaces the base model's"
            (log.warning if checkpoint else log.info)(
                "encoder.%s_prefix %r %s %r (%s)", side, option, source, recorded[side], folder
            )
    return prompts


def st_prompts(prompts: dict[str, str], config: dict | None = None) -> dict[str, str]:
    """sentence-transformers' ``prompts`` for ``prompts`` (by side): the query's as "query", the
    code's as "document"; other prompts of ``config`` (a classification one) are kept."""
    replaced = {name for names in PROMPT_NAMES.values() for name in names}
    kept = {k: v for k, v in ((config or {}).get("prompts") or {}).items() if k not in replaced}
    return {**kept, **{WRITTEN_NAME[side]: prompts[side] for side in SIDES}}


def write_prompts(directory: Path, prompts: dict[str, str], config: dict | None = None) -> None:
    """Record ``prompts`` in ``directory``'s config_sentence_transformers.json: ``config`` (the
    base folder's) with its prompts replaced."""
    written = {**(config or {}), "prompts": st_prompts(prompts, config)}
    (Path(directory) / ST_CONFIG_FILE).write_text(json.dumps(written, indent=2) + "\n")
