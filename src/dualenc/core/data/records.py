"""JSONL pairs read with the file, line and column of every bad record.

A record is one JSON object per line holding a query and a code field (names from
``DataConfig``, so CodeSearchNet's ``docstring``/``code`` files read as they are).
A line longer than ``MAX_RECORD_BYTES`` is a bad record ("too_large"): it is never
parsed, so a runaway line (a minified bundle, a data blob) costs neither memory nor
tokenizer time, and a real pair is truncated to ``max_seq_len`` tokens anyway.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from dualenc.core.config import DataConfig
from dualenc.errors import DualencError

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 4 << 20
# record fields other than query and code that are kept (small, useful to show a hit)
METADATA_FIELDS = ("path", "symbol", "line", "repo", "url", "func_name")


@attrs.frozen
class PairRecords:
    """The pairs of one file, as ``read_pairs`` returns them."""

    path: str
    queries: list[str]
    codes: list[str]
    metadata: list[dict[str, Any]] | None  # None when no record has any METADATA_FIELDS
    skipped: dict[str, int]  # reason -> bad records dropped (on_bad_record="skip")
    content_hash: str  # of the (decompressed) bytes


class _BadRecord(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _open_binary(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise DualencError(f"{path}: is a directory, not a JSONL file")
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise DualencError(f"{path}: data file not found") from None
    except PermissionError:
        raise DualencError(f"{path}: permission denied") from None


def _iter_lines(stream: BinaryIO, hasher) -> Iterator[tuple[int, bytes | None, int]]:
    """(1-based line number, line or None when over the size limit, size in bytes).

    Reads at most ``MAX_RECORD_BYTES`` of a line into memory; the rest of a longer line is
    hashed and discarded in chunks.
    """
    number = 0
    while True:
        line = stream.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        number += 1
        hasher.update(line)
        if len(line) <= MAX_RECORD_BYTES or line.endswith(b"\n"):
            yield number, line, len(line)
            continue
        size = len(line)
        while line and not line.endswith(b"\n"):
            line = stream.readline(1 << 20)
            hasher.update(line)
            size += len(line)
        yield number, None, size


def _parse_record(line: bytes, first_line: bool, query_field: str, code_field: str) -> dict | None:
    """The record of one line, or None for a blank line. Raises _BadRecord."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(
            "not_utf8", f"not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})"
        ) from None
    if first_line:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        record = json.loads(text.rstrip("\r\n"))  # so an error column stays on the line
    except json.JSONDecodeError as exc:
        raise _BadRecord("bad_json", f"bad JSON: {exc.msg} (column {exc.pos + 1})") from None
    if not isinstance(record, dict):
        raise _BadRecord("not_object", f"expected a JSON object, got {_json_type(record)}")
    for field in (query_field, code_field):
        if field not in record:
            present = ", ".join(sorted(record)[:8]) or "none"
            raise _BadRecord("missing_field", f"missing field {field!r} (fields present: {present})")
        value = record[field]
        if not isinstance(value, str):
            raise _BadRecord("not_string", f"field {field!r} is {_json_type(value)}, not a string")
        if not value.strip():
            raise _BadRecord("empty_field", f"field {field!r} is empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadRecord("bad_text", f"field {field!r} holds an unpaired surrogate escape") from None
    return record


def read_pairs(
    path: str | Path,
    query_field: str = "query",
    code_field: str = "code",
    on_bad_record: str = "error",
    *,
    log_skipped: bool = True,
) -> PairRecords:
    """Every pair of a ``.jsonl`` or ``.jsonl.gz`` file.

    A bad line raises ``DualencError("file:line: what is wrong")``; with
    ``on_bad_record="skip"`` it is dropped, counted by reason and logged (unless not
    ``log_skipped``: a caller that reads the file again reports once). Blank lines are
    ignored. A file with no pairs at all is an error either way.
    """
    path = Path(path)
    hasher = hashlib.blake2b(digest_size=16)
    queries: list[str] = []
    codes: list[str] = []
    metadata: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    first_problem: dict[str, str] = {}
    with _open_binary(path) as stream:
        try:
            for number, line, size in _iter_lines(stream, hasher):
                try:
                    if line is None:
                        raise _BadRecord(
                            "too_large",
                            f"record is {size / 2**20:.1f} MiB, over the {MAX_RECORD_BYTES >> 20} MiB "
                            "limit per line",
                        )
                    record = _parse_record(line, number == 1, query_field, code_field)
                except _BadRecord as bad:
                    message = f"{path}:{number}: {bad}"
                    if on_bad_record != "skip":
                        raise DualencError(message + " (data.on_bad_record=skip drops such lines)") from None
                    skipped[bad.reason] += 1
                    first_problem.setdefault(bad.reason, message)
                    continue
                if record is None:
                    continue
                queries.append(record[query_field])
                codes.append(record[code_field])
                metadata.append({key: record[key] for key in METADATA_FIELDS if key in record})
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DualencError(f"{path}: not a readable gzip file ({exc})") from None
        except OSError as exc:
            raise DualencError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if skipped and log_skipped:
        logger.warning(
            "%s: skipped %d bad records: %s",
            path,
            sum(skipped.values()),
            "; ".join(
                f"{reason} x{count} (first: {first_problem[reason]})" for reason, count in skipped.items()
            ),
        )
    if not queries:
        if skipped:
            counts = ", ".join(f"{reason} {count}" for reason, count in skipped.items())
            raise DualencError(f"{path}: no valid pairs, every record was bad ({counts})")
        raise DualencError(f"{path}: empty file, no pairs")
    return PairRecords(
        path=str(path),
        queries=queries,
        codes=codes,
        metadata=metadata if any(metadata) else None,
        skipped=dict(skipped),
        content_hash=hasher.hexdigest(),
    )


def read_training_texts(path: str | Path, data_config: DataConfig) -> list[str]:
    """Every query and code of a pairs file: what ``encoder.prepare`` learns a vocabulary from.

    Skipped records are not logged here: training reads the file again (``load_pair_set``),
    and that read reports them.
    """
    records = read_pairs(
        path, data_config.query_field, data_config.code_field, data_config.on_bad_record, log_skipped=False
    )
    return records.queries + records.codes
