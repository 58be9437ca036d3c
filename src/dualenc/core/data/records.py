"""Training pairs read from JSONL or parquet, with the file and line (or row) of every bad record.

A record is one JSON object per line (or one parquet row) holding a query and a code field
(names from ``DataConfig``, so CodeSearchNet's ``docstring``/``code`` files read as they
are), or FlagEmbedding's shape: a query, a list of positives (``pos``), one pair each.
Either may carry provided negatives (``neg``, a list of codes), which go with every pair
of the record. A line longer than ``MAX_RECORD_BYTES`` is a bad record ("too_large"): it
is never parsed, so a runaway line (a minified bundle, a data blob) costs neither memory
nor tokenizer time, and a real pair is truncated to ``max_seq_len`` tokens anyway.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from dualenc.core.config import DataConfig, TrainFile
from dualenc.errors import DualencError

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 4 << 20
# record fields other than query and code that are kept (small, useful to show a hit)
METADATA_FIELDS = ("path", "symbol", "line", "repo", "url", "func_name")
PARQUET_BATCH_ROWS = 4096


@attrs.frozen
class PairRecords:
    """The pairs of one file, as ``read_pairs`` returns them."""

    path: str
    queries: list[str]
    codes: list[str]
    metadata: list[dict[str, Any]] | None  # None when no record has any METADATA_FIELDS
    skipped: dict[str, int]  # reason -> bad records dropped (on_bad_record="skip")
    content_hash: str  # of the (decompressed) bytes
    # per pair, the provided negatives of its record; None when no record has any
    negatives: list[list[str]] | None = None


@attrs.frozen
class Fields:
    """The record fields ``read_pairs`` reads."""

    query: str = "query"
    code: str = "code"
    positives: str = "pos"
    negatives: str = "neg"

    @classmethod
    def of(cls, data_config: DataConfig) -> Fields:
        return cls(
            data_config.query_field,
            data_config.code_field,
            data_config.positives_field,
            data_config.negatives_field,
        )


class _BadRecord(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _open_binary(path: Path) -> BinaryIO:
    try:
        if path.is_dir():
            raise DualencError(f"{path}: is a directory, not a data file")
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


def _parse_line(line: bytes, first_line: bool) -> dict | None:
    """The JSON object of one line, or None for a blank line. Raises _BadRecord."""
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
    return record


def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _BadRecord("not_string", f"{what} is {_json_type(value)}, not a string")
    if not value.strip():
        raise _BadRecord("empty_field", f"{what} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadRecord("bad_text", f"{what} holds an unpaired surrogate escape") from None
    return value


def _text_list(record: dict, field: str, allow_empty: bool) -> list[str]:
    value = record[field]
    if not isinstance(value, list):
        raise _BadRecord("not_list", f"field {field!r} is {_json_type(value)}, not a list of strings")
    if not value and not allow_empty:
        raise _BadRecord("empty_field", f"field {field!r} is an empty list")
    return [_check_text(item, f"field {field!r} item {position}") for position, item in enumerate(value, 1)]


def _pairs_of(record: dict, fields: Fields) -> tuple[str, list[str], list[str]]:
    """(query, its codes, the provided negatives) of one record. Raises _BadRecord."""
    if fields.query not in record:
        raise _BadRecord(
            "missing_field", f"missing field {fields.query!r} (fields present: {_present(record)})"
        )
    query = _check_text(record[fields.query], f"field {fields.query!r}")
    has_code, has_positives = fields.code in record, fields.positives in record
    if has_code and has_positives:
        raise _BadRecord(
            "code_and_pos",
            f"has both {fields.code!r} and {fields.positives!r}: give one code or a list of positives",
        )
    if has_code:
        codes = [_check_text(record[fields.code], f"field {fields.code!r}")]
    elif has_positives:
        codes = _text_list(record, fields.positives, allow_empty=False)
    else:
        raise _BadRecord(
            "missing_field",
            f"missing field {fields.code!r} or {fields.positives!r} (fields present: {_present(record)})",
        )
    negatives = []
    if record.get(fields.negatives) is not None:  # null: no negatives
        negatives = _text_list(record, fields.negatives, allow_empty=True)
    return query, codes, negatives


def _present(record: dict) -> str:
    return ", ".join(sorted(record)[:8]) or "none"


def _jsonl_records(path: Path, hasher) -> Iterator[tuple[str, dict | _BadRecord]]:
    """(``file:line``, the line's object or what is wrong with it) for every non-blank line."""
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
                    record = _parse_line(line, number == 1)
                except _BadRecord as bad:
                    yield f"{path}:{number}", bad
                    continue
                if record is not None:
                    yield f"{path}:{number}", record
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DualencError(f"{path}: not a readable gzip file ({exc})") from None
        except OSError as exc:
            raise DualencError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parquet_type_problem(arrow_type, wanted: str) -> str | None:
    import pyarrow as pa

    def is_text(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    if wanted == "string":
        ok = is_text(arrow_type)
    else:
        ok = (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and is_text(
            arrow_type.value_type
        )
    return None if ok else f"is {arrow_type}, not {'string' if wanted == 'string' else 'list<string>'}"


def _parquet_records(path: Path, fields: Fields, hasher) -> Iterator[tuple[str, dict | _BadRecord]]:
    """(``file: row N``, the row as a record) for every row; a null is an absent field.

    Columns are read by the same names as JSONL fields; a column of the wrong type is a
    problem of the file, not of its rows.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DualencError(f"{path}: reading parquet needs pyarrow: pip install 'dualenc[parquet]'") from None
    if path.is_dir():
        raise DualencError(f"{path}: is a directory, not a data file")
    try:
        with open(path, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                hasher.update(chunk)
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise DualencError(f"{path}: data file not found") from None
    except PermissionError:
        raise DualencError(f"{path}: permission denied") from None
    except (pa.ArrowException, OSError) as exc:
        raise DualencError(f"{path}: not a readable parquet file ({exc})") from None
    schema = parquet.schema_arrow
    wanted = {
        fields.query: "string",
        fields.code: "string",
        fields.positives: "list",
        fields.negatives: "list",
    }
    columns = [name for name in wanted if name in schema.names]
    problems = [
        f"column {name!r} {problem}"
        for name in columns
        if (problem := _parquet_type_problem(schema.field(name).type, wanted[name])) is not None
    ]
    if fields.query not in schema.names:
        problems.append(f"no column {fields.query!r}")
    if fields.code not in schema.names and fields.positives not in schema.names:
        problems.append(f"no column {fields.code!r} or {fields.positives!r}")
    if problems:
        present = ", ".join(schema.names[:12]) or "none"
        raise DualencError(f"{path}: {'; '.join(problems)} (columns: {present})")
    columns += [name for name in METADATA_FIELDS if name in schema.names and name not in wanted]
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for row in batch.to_pylist():
                number += 1
                yield f"{path}: row {number}", {key: value for key, value in row.items() if value is not None}
    except (pa.ArrowException, OSError) as exc:
        raise DualencError(f"{path}: not a readable parquet file ({exc})") from None


def is_parquet(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".parquet"


def read_pairs(
    path: str | Path,
    query_field: str = "query",
    code_field: str = "code",
    on_bad_record: str = "error",
    *,
    log_skipped: bool = True,
    positives_field: str = "pos",
    negatives_field: str = "neg",
) -> PairRecords:
    """Every pair of a ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file.

    A record with a list of positives gives one pair per positive, each with the record's
    negatives. A bad record raises ``DualencError("file:line: what is wrong")`` (``file: row
    N:`` for parquet, rows counted from 1); with ``on_bad_record="skip"`` it is dropped,
    counted by reason and logged (unless not ``log_skipped``: a caller that reads the file
    again reports once). Blank lines are ignored. A file with no pairs at all is an error
    either way.
    """
    path = Path(path)
    fields = Fields(query_field, code_field, positives_field, negatives_field)
    hasher = hashlib.blake2b(digest_size=16)
    queries: list[str] = []
    codes: list[str] = []
    negatives: list[list[str]] = []
    metadata: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    first_problem: dict[str, str] = {}
    records = _parquet_records(path, fields, hasher) if is_parquet(path) else _jsonl_records(path, hasher)
    for where, record in records:
        try:
            if isinstance(record, _BadRecord):
                raise record
            query, positives, provided = _pairs_of(record, fields)
        except _BadRecord as bad:
            message = f"{where}: {bad}"
            if on_bad_record != "skip":
                raise DualencError(message + " (data.on_bad_record=skip drops such records)") from None
            skipped[bad.reason] += 1
            first_problem.setdefault(bad.reason, message)
            continue
        extra = {key: record[key] for key in METADATA_FIELDS if key in record}
        for code in positives:
            queries.append(query)
            codes.append(code)
            negatives.append(provided)
            metadata.append(extra)
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
        negatives=negatives if any(negatives) else None,
    )


def train_paths(files: str | Path | Iterable[str | Path | TrainFile]) -> list[Path]:
    """The paths of one file or of ``DataConfig.training_files()``."""
    if isinstance(files, (str, Path)):
        return [Path(files)]
    return [Path(file.path if isinstance(file, TrainFile) else file) for file in files]


def read_data_config_pairs(
    path: str | Path, data_config: DataConfig, *, log_skipped: bool = True
) -> PairRecords:
    """``read_pairs`` with the fields and ``on_bad_record`` of ``data_config``."""
    return read_pairs(
        path,
        data_config.query_field,
        data_config.code_field,
        data_config.on_bad_record,
        log_skipped=log_skipped,
        positives_field=data_config.positives_field,
        negatives_field=data_config.negatives_field,
    )


def read_training_texts(
    files: str | Path | Iterable[str | Path | TrainFile], data_config: DataConfig
) -> list[str]:
    """Every query, code and provided negative of the training files: what ``encoder.prepare``
    learns a vocabulary from (all queries, then all codes, then the negatives).

    Skipped records are not logged here: training reads the files again (``load_pair_set``),
    and that read reports them.
    """
    queries: list[str] = []
    codes: list[str] = []
    negatives: list[str] = []
    for path in train_paths(files):
        records = read_data_config_pairs(path, data_config, log_skipped=False)
        queries += records.queries
        codes += records.codes
        seen: set[int] = set()
        for provided in records.negatives or ():
            if id(provided) not in seen:  # the pairs of one record share its list
                seen.add(id(provided))
                negatives += provided
    return queries + codes + negatives
