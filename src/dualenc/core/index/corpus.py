"""What an index is built from and tuned on: ``CodeRecord``s of a JSONL corpus or of the
functions of Python sources, read a chunk at a time; and files of natural-language queries."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import attrs

from dualenc.core.io import iter_jsonl
from dualenc.errors import DualencError


@attrs.frozen
class CodeRecord:
    """One entry of a code corpus."""

    code: str
    path: str | None = None
    symbol: str | None = None
    line: int | None = None
    id: str | None = None

    def content_hash(self) -> str:
        return hashlib.blake2b(self.code.encode("utf-8"), digest_size=16).hexdigest()

    def base_key(self) -> str:
        """Identity across updates; a record with neither id nor path+symbol is its code."""
        if self.id is not None:
            return self.id
        if self.path and self.symbol:
            return f"{self.path}::{self.symbol}"
        return f"sha:{self.content_hash()}"


def iter_corpus(path: Path) -> Iterator[CodeRecord]:
    """Records of a JSONL file (field ``code``; optional ``path``, ``symbol``, ``line``,
    ``id``), or the functions of a folder or ``.py`` file of Python sources."""
    path = Path(path)
    if not path.exists():
        raise DualencError(f"{path}: code corpus not found")
    if path.is_dir() or path.suffix == ".py":
        return _iter_python_functions(path)
    return (_code_record(data, f"{path}:{number}") for number, data in iter_jsonl(path, "code corpus"))


def _iter_python_functions(path: Path) -> Iterator[CodeRecord]:
    from dualenc.core.data.extract import scan_functions

    # every function, docstring kept: the same records `dualenc data extract` reads, unfiltered
    for function in scan_functions([path], docstring="keep").functions:
        yield CodeRecord(code=function.code, path=function.path, symbol=function.symbol, line=function.line)


def _code_record(data: dict, where: str) -> CodeRecord:
    code = data.get("code")
    if not isinstance(code, str) or not code.strip():
        raise DualencError(f"{where}: 'code' must be a non-empty string")
    for field in ("path", "symbol"):
        if data.get(field) is not None and not isinstance(data[field], str):
            raise DualencError(f"{where}: '{field}' must be a string")
    line_number = data.get("line")
    if line_number is not None and (isinstance(line_number, bool) or not isinstance(line_number, int)):
        raise DualencError(f"{where}: 'line' must be an integer")
    record_id = data.get("id")
    if record_id is not None and (isinstance(record_id, bool) or not isinstance(record_id, str | int)):
        raise DualencError(f"{where}: 'id' must be a string or an integer")
    return CodeRecord(
        code=code,
        path=data.get("path"),
        symbol=data.get("symbol"),
        line=line_number,
        id=None if record_id is None else str(record_id),
    )


def read_queries(path: Path) -> list[str]:
    """Queries of a JSONL file (field ``query``) or of a text file, one per line."""
    return [query for query, _ in read_query_pairs(path)]


def read_query_pairs(path: Path) -> list[tuple[str, str | None]]:
    """(query, code) of each line of a JSONL file (fields ``query`` and, optionally, ``code``:
    a pairs file such as val.jsonl), or (query, None) of each line of a text file."""
    path = Path(path)
    if not path.is_file():
        raise DualencError(f"{path}: query file not found")
    pairs: list[tuple[str, str | None]] = []
    with open(path, encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not line.lstrip().startswith("{"):
                pairs.append((line.strip(), None))
                continue
            try:
                data = json.loads(line)
                query = data.get("query")
            except (json.JSONDecodeError, AttributeError):
                raise DualencError(f"{path}:{number}: not a JSON object") from None
            if not isinstance(query, str) or not query.strip():
                raise DualencError(f"{path}:{number}: 'query' must be a non-empty string")
            code = data.get("code")
            if code is not None and (not isinstance(code, str) or not code.strip()):
                raise DualencError(f"{path}:{number}: 'code' must be a non-empty string")
            pairs.append((query, code))
    if not pairs:
        raise DualencError(f"{path}: no queries")
    return pairs
