"""dualenc: dual encoders for natural-language -> code search.

Everything a user or a plugin author imports is a name of this package; what lives under
``dualenc.core`` may change without notice. Names are imported on first use, so
``import dualenc`` loads neither torch nor faiss.

- Plugin authors: ``hookimpl``, ``Register`` (the callback every component hook receives),
  the protocols ``EncoderModel``, ``Loss``, ``Miner``, ``Evaluator``, ``Tracker``, the records
  ``ContrastiveBatch``, ``EvalSet`` and ``PairSet``, the option validators ``at_least``,
  ``at_most``, ``greater_than``, ``one_of``, ``non_empty``, and ``encode_texts`` /
  ``encode_token_ids`` for encoding many texts the way evaluation and mining do, the dedup
  keys ``query_key`` and ``normalised_code_key``, ``read_codes`` (a JSONL file's codes),
  ``load_weights`` (an encoder's safetensors weights, with a short error when they do not
  fit), ``atomic_write_text`` / ``atomic_write_json``, ``progress_enabled`` (False while
  ``train(..., progress=False)`` runs: leave progress bars out), ``code_words`` (the
  identifier-aware tokenizer), ``LexicalIndex`` (BM25 as a sparse matrix) and ``Fusion``
  (hybrid search's fusion of dense and lexical scores).
  ``load_catalog()`` finds every installed component (a plugin's tests use it).
  ``dualenc.dropout`` holds the CPU dropout the built-in encoders use.
- Users: ``train`` (a run from a config path, mapping or ``RunConfig``; returns a
  ``TrainResult``), ``mine`` (one round of hard negatives written as training rows, as
  ``dualenc mine``; returns a ``MineResult``), ``Encoder`` (a checkpoint or Hugging Face
  model folder that encodes texts), ``load_config``, ``Retriever`` and ``Hit``; errors
  ``DualencError``, ``ConfigError``.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dualenc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# public name -> the module that defines it
_PUBLIC = {
    "hookimpl": "dualenc.registry.hookspecs",
    "API_VERSION": "dualenc.registry.hookspecs",
    "Register": "dualenc.registry.hookspecs",
    "load_catalog": "dualenc.registry.catalog",
    "Catalog": "dualenc.registry.catalog",
    "EncoderModel": "dualenc.registry.kinds",
    "Loss": "dualenc.registry.kinds",
    "Miner": "dualenc.registry.kinds",
    "Evaluator": "dualenc.registry.kinds",
    "Tracker": "dualenc.registry.kinds",
    "ContrastiveBatch": "dualenc.registry.kinds",
    "EvalSet": "dualenc.registry.kinds",
    "SIDES": "dualenc.registry.kinds",
    "at_least": "dualenc.validators",
    "at_most": "dualenc.validators",
    "greater_than": "dualenc.validators",
    "one_of": "dualenc.validators",
    "non_empty": "dualenc.validators",
    "DualencError": "dualenc.errors",
    "ConfigError": "dualenc.errors",
    "load_config": "dualenc.core.configio",
    "PairSet": "dualenc.core.data.pairset",
    "query_key": "dualenc.core.data.keys",
    "normalised_code_key": "dualenc.core.data.keys",
    "read_codes": "dualenc.core.data.evalsets",
    "load_weights": "dualenc.core.checkpoint",
    "atomic_write_text": "dualenc.core.io",
    "atomic_write_json": "dualenc.core.io",
    "encode_texts": "dualenc.core.encode",
    "encode_token_ids": "dualenc.core.encode",
    "train": "dualenc.api",
    "progress_enabled": "dualenc.api",
    "TrainResult": "dualenc.core.loop",
    "mine": "dualenc.api",
    "MineResult": "dualenc.core.mine",
    "Encoder": "dualenc.encoder",
    "Retriever": "dualenc.retriever",
    "Hit": "dualenc.retriever",
    "code_words": "dualenc.core.lexical",
    "LexicalIndex": "dualenc.core.lexical",
    "Fusion": "dualenc.core.fusion",
}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'dualenc' has no attribute {name!r}")
    value = getattr(import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


__all__ = ["__version__", *_PUBLIC]
