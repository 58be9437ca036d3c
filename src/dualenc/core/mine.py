"""One round of hard-negative mining written as training rows: what ``dualenc mine`` and
``dualenc.mine`` run.

The offline counterpart of sentence-transformers' ``mine_hard_negatives``. The round is the
configured miner's own (``RoundMiner.run_round``, what training's refresh calls), at step 0
with the miner's ``seed``, with the encoder training would start from: the checkpoint's
(``--checkpoint``, the same weights a ``--resume-from`` loads) or the config's, built as a new
run builds it. So the file, fed back to ``dualenc train`` with ``miner: none``, gives the
batches that training with the miner gives up to its first refresh.

The rows are ``{query, code, neg: [code, ...]}`` under the config's field names; beside the
file, ``<out>.manifest.json`` says what made it: model, data and corpus hashes, the miner and
its options, the seed, the counts and the command.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path

import attrs
import numpy as np

from dualenc.errors import DualencError

MANIFEST_SUFFIX = ".manifest.json"
# the round training's first refresh runs: before step 1
ROUND_STEP = 0


@attrs.frozen
class MineResult:
    """What ``dualenc.mine`` (and ``dualenc mine``) wrote: the rows file, its manifest, and
    the manifest's counts."""

    out: Path
    manifest: Path
    rows: int  # one per training pair
    negatives: int  # mined negatives written
    short: int  # rows with fewer than num_negatives mined negatives
    num_negatives: int
    provided: int  # negatives the training rows already had, kept after the mined ones


def manifest_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + MANIFEST_SUFFIX)


def mine_to_file(
    config,
    *,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    corpus: str | os.PathLike | None = None,
    corpus_field: str = "code",
    seed: int | None = None,
    catalog=None,
    command: str | None = None,
) -> MineResult:
    """Mine one round for ``config`` (a validated ``RunConfig``)'s training pairs and write
    the rows and the manifest; ``command`` is the invocation the manifest records."""
    import torch

    from dualenc import __version__
    from dualenc.core.build import build_encoder
    from dualenc.core.checkpoint import checkpoint_hash, read_encoder_record
    from dualenc.core.configio import CONVERTER, unstructure
    from dualenc.core.data.pairset import load_pair_set
    from dualenc.core.data.records import read_training_texts
    from dualenc.core.device import resolve_device
    from dualenc.core.io import atomic_write_json
    from dualenc.registry.catalog import load_catalog

    catalog = catalog or load_catalog()
    out = Path(out)
    checkpoint = None if checkpoint is None else Path(checkpoint)
    corpus = None if corpus is None else Path(corpus)
    miner_name = config.plugins.miner
    if miner_name == "none":
        raise DualencError(
            "plugins.miner: the config selects no miner ('none'); choose one with --plugin miner=faiss "
            "(or bm25, random)"
        )
    config = _with_seed(config, seed)
    train_files = config.data.training_files()
    _check_train_files(config.data)
    _check_out(out, [Path(file.path) for file in train_files])
    if checkpoint is not None:
        read_encoder_record(checkpoint)  # a clear error before any work
    codes = None if corpus is None else _read_corpus(corpus, corpus_field)

    miner = catalog.get("miner", miner_name).create(config.miner)
    if codes is not None and not hasattr(miner, "run_round"):
        raise DualencError(f"--corpus: the {miner_name!r} miner cannot draw negatives from another corpus")
    torch.manual_seed(config.train.seed)  # as a run seeds itself before building its encoder
    encoder = build_encoder(config, catalog, checkpoint_dir=checkpoint)
    if checkpoint is None:
        encoder.prepare(read_training_texts(train_files, config.data))
    encoder.to(resolve_device(config.train.device))
    pairs = load_pair_set(train_files, config.data, encoder)
    negatives, record = _mine_round(miner, encoder, pairs, codes)

    texts = pairs.codes if codes is None else codes
    fields = _fields(config.data)
    kept = negatives >= 0
    manifest_file = manifest_path(out)
    manifest_file.unlink(missing_ok=True)  # a file without its manifest is one not finished
    digest = _write_rows(out, _rows(pairs, negatives, texts, fields))
    num_negatives = negatives.shape[1]
    counts = {
        "rows": len(pairs),
        "negatives": int(kept.sum()),
        "short": int((kept.sum(axis=1) < num_negatives).sum()),
        "num_negatives": num_negatives,
        "provided": 0 if pairs.negatives is None else len(pairs.negatives.flat),
    }
    options = getattr(miner, "options", None)
    manifest = {
        "dualenc_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "output": {"file": str(out), "sha256": digest, "fields": fields},
        "model": {
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": None if checkpoint is None else checkpoint_hash(checkpoint),
            "encoder": config.plugins.encoder,
            "encoder_options": CONVERTER.unstructure(config.encoder),
        },
        "data": {
            "files": [
                {
                    "path": f.path,
                    "weight": f.weight,
                    "sha256": file_sha256(Path(f.path)),
                    "pairs": f.stop - f.start,
                }
                for f in pairs.files
            ],
            "pairs": len(pairs),
            "skipped": pairs.skipped,
        },
        "corpus": None
        if corpus is None
        else {"file": str(corpus), "field": corpus_field, "sha256": file_sha256(corpus), "codes": len(codes)},
        "miner": {
            "name": miner_name,
            "options": None if options is None else CONVERTER.unstructure(options),
        },
        "seed": getattr(options, "seed", None),
        "step": ROUND_STEP,
        "counts": counts,
        "round": record,
        "config": unstructure(config),
    }
    atomic_write_json(manifest_file, manifest)
    return MineResult(out=out, manifest=manifest_file, **counts)


def _with_seed(config, seed: int | None):
    if seed is None:
        return config
    if not attrs.has(type(config.miner)) or "seed" not in attrs.fields_dict(type(config.miner)):
        raise DualencError(f"--seed: the {config.plugins.miner!r} miner has no seed option")
    return attrs.evolve(config, miner=attrs.evolve(config.miner, seed=seed))


def _check_train_files(data_config) -> None:
    """Before a model is loaded: each training file there (the validation files are not read)."""
    keys = [f"train_files.{i}.path" for i in range(len(data_config.train_files))] or ["train_file"]
    for key, file in zip(keys, data_config.training_files(), strict=True):
        if not Path(file.path).is_file():
            problem = "not a file" if Path(file.path).exists() else "file not found"
            raise DualencError(f"data.{key}: {file.path}: {problem}")


def _check_out(out: Path, train_files: list[Path]) -> None:
    if out.is_dir():
        raise DualencError(f"--out {out}: is a directory; give the JSONL file to write")
    if out.exists() and any(out.resolve() == path.resolve() for path in train_files if path.exists()):
        raise DualencError(f"--out {out}: is a training file of the config; write the rows elsewhere")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DualencError(f"--out {out}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise DualencError(f"--out {out}: its folder is not writable")


def _read_corpus(path: Path, field: str) -> list[str]:
    from dualenc.core.data.evalsets import read_codes

    if path.is_dir():
        raise DualencError(f"--corpus {path}: is a directory; give a JSONL file of codes")
    try:
        codes = read_codes(path, field)
    except UnicodeDecodeError as exc:
        raise DualencError(f"--corpus {path}: not UTF-8 text ({exc.reason})") from None
    if not codes:
        raise DualencError(f"--corpus {path}: no codes (expected one JSON object with {field!r} per line)")
    return codes


def _mine_round(miner, encoder, pairs, codes) -> tuple[np.ndarray, dict]:
    """The round's [N, K] negatives (-1 where short) and its record: through ``run_round``
    where the miner has it, else through the ``Miner`` protocol (its files in a scratch folder)."""
    if hasattr(miner, "run_round"):
        mined = miner.run_round(encoder, pairs, ROUND_STEP, codes=codes)
        return mined.negatives, {**mined.record, "metrics": mined.metrics}
    with tempfile.TemporaryDirectory(prefix="dualenc-mine-") as scratch:
        metrics = miner.mine(encoder, pairs, ROUND_STEP, Path(scratch))
    negatives = np.asarray(miner.negatives(np.arange(len(pairs))), dtype=np.int64)
    return negatives, {"step": ROUND_STEP, "metrics": metrics}


def _fields(data_config) -> dict[str, str]:
    return {
        "query": data_config.query_field,
        "code": data_config.code_field,
        "negatives": data_config.negatives_field,
    }


def _rows(pairs, negatives: np.ndarray, texts, fields: dict[str, str]):
    """One row per pair: its mined negatives, then those its training row provided."""
    for row, picked in enumerate(negatives):
        provided = [] if pairs.negatives is None else [pairs.row_code(int(j)) for j in pairs.negatives[row]]
        yield {
            **(pairs.metadata[row] if pairs.metadata else {}),  # path, symbol, ... as read
            fields["query"]: pairs.queries[row],
            fields["code"]: pairs.codes[row],
            fields["negatives"]: [texts[j] for j in picked if j >= 0] + provided,
        }


def _write_rows(path: Path, rows) -> str:
    """Stream ``rows`` as JSONL into a hidden file beside ``path``, then rename it into place:
    a reader sees the old file or the whole new one. Returns the bytes' sha256."""
    from dualenc.core.io import atomic_open

    digest = hashlib.sha256()
    with atomic_open(path, "wb") as handle:
        for row in rows:
            line = (json.dumps(row) + "\n").encode("utf-8")
            digest.update(line)
            handle.write(line)
    return f"sha256:{digest.hexdigest()}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"
