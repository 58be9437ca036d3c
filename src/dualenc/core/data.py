"""Training data: JSONL pairs read with exact error locations, dedup keys, a token cache,
length-bucketed batches without false in-batch negatives, and validation sets.

A record is one JSON object per line holding a query and a code field (names from
``DataConfig``, so CodeSearchNet's ``docstring``/``code`` files read as they are).
A line longer than ``MAX_RECORD_BYTES`` is a bad record ("too_large"): it is never
parsed, so a runaway line (a minified bundle, a data blob) costs neither memory nor
tokenizer time, and a real pair is truncated to ``max_seq_len`` tokens anyway.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import keyword
import logging
import os
import re
import secrets
import shutil
import time
import tokenize
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import numpy as np
import torch

from dualenc.core.config import DataConfig
from dualenc.core.encode import pad_batch
from dualenc.errors import DualencError
from dualenc.registry.kinds import EvalSet

logger = logging.getLogger(__name__)

MAX_RECORD_BYTES = 4 << 20
# record fields other than query and code that are kept (small, useful to show a hit)
METADATA_FIELDS = ("path", "symbol", "line", "repo", "url", "func_name")
# bump when the cache layout or what goes into it (keys, limits) changes
CACHE_FORMAT = 1
_TOKENIZE_CHUNK = 8192


# --- reading ---------------------------------------------------------------------------


@attrs.frozen
class PairRecords:
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
    path: str | Path, query_field: str = "query", code_field: str = "code", on_bad_record: str = "error"
) -> PairRecords:
    """Every pair of a ``.jsonl`` or ``.jsonl.gz`` file.

    A bad line raises ``DualencError("file:line: what is wrong")``; with
    ``on_bad_record="skip"`` it is dropped, counted by reason and logged. Blank lines are
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
    if skipped:
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
    """Every query and code of a pairs file: what ``encoder.prepare`` learns a vocabulary from."""
    records = read_pairs(path, data_config.query_field, data_config.code_field, data_config.on_bad_record)
    return records.queries + records.codes


# --- dedup keys ------------------------------------------------------------------------


def stable_int64(text: str) -> int:
    """A hash that is the same in every process and on every machine (unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def query_key(query: str) -> int:
    """int64 key of a query: case and whitespace do not matter."""
    return stable_int64(" ".join(query.lower().split()))


# skipped without ending a statement: a docstring may be followed by a comment
_INVISIBLE_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING}
_STATEMENT_BOUNDARY = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_LAYOUT_TOKENS = _STATEMENT_BOUNDARY | {tokenize.ENDMARKER}
_WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")


def _python_tokens(code: str) -> list[str]:
    """Token strings without comments, layout and docstrings. Raises on untokenizable code.

    A docstring is any statement made only of string literals: it does nothing at run time.
    """
    tokens: list[str] = []
    statement_strings: list[str] = []
    at_statement_start = True
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        kind = token.type
        if kind in _INVISIBLE_TOKENS:
            continue
        if kind == tokenize.STRING and (at_statement_start or statement_strings):
            statement_strings.append(token.string)
            at_statement_start = False
            continue
        if kind == tokenize.NEWLINE:
            statement_strings.clear()  # the statement was only strings: a docstring
        tokens.extend(statement_strings)
        statement_strings.clear()
        at_statement_start = kind in _STATEMENT_BOUNDARY
        if kind not in _LAYOUT_TOKENS:
            tokens.append(token.string)
    return tokens + statement_strings


def _rename_identifiers(tokens: list[str]) -> list[str]:
    """Each distinct non-keyword name becomes v0, v1, ... in order of first use."""
    names: dict[str, str] = {}
    renamed = []
    for token in tokens:
        if token.isidentifier() and not keyword.iskeyword(token):
            token = names.setdefault(token, f"v{len(names)}")
        renamed.append(token)
    return renamed


def normalised_code_key(code: str, normalise_identifiers: bool = False) -> int:
    """int64 key of code with comments, docstrings and whitespace stripped.

    Python is tokenized; code that does not tokenize as Python (other languages, snippets
    with broken indentation) falls back to its word and symbol sequence, so only
    whitespace is ignored for it. ``normalise_identifiers`` renames every name
    canonically, so renamed clones share a key.
    """
    try:
        tokens = _python_tokens(code)
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        tokens = _WORD_OR_SYMBOL.findall(code)
    if normalise_identifiers:
        tokens = _rename_identifiers(tokens)
    return stable_int64(" ".join(tokens))


# --- token ids -------------------------------------------------------------------------


class RaggedIds(Sequence):
    """Variable-length int32 sequences in one flat array: row i is ``flat[offsets[i]:offsets[i+1]]``."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def from_arrays(cls, rows: Sequence[np.ndarray]) -> RaggedIds:
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in rows], out=offsets[1:])
        flat = np.concatenate(rows).astype(np.int32, copy=False) if rows else np.zeros(0, np.int32)
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        return self.flat[self.offsets[index] : self.offsets[index + 1]]

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@attrs.frozen(eq=False)
class PairSet:
    """Pairs with their dedup keys and token ids, as training, mining and evaluation use them."""

    queries: list[str]
    codes: list[str]
    query_key: np.ndarray  # [N] int64, see ``query_key``
    code_key: np.ndarray  # [N] int64, see ``normalised_code_key``
    query_ids: RaggedIds
    code_ids: RaggedIds
    metadata: list[dict[str, Any]] | None = None
    skipped: dict[str, int] = attrs.field(factory=dict)
    pad_id: int = 0  # the encoder's, for ``collate``

    def __len__(self) -> int:
        return len(self.queries)

    def query_tokens(self, index: int) -> np.ndarray:
        return self.query_ids[index]

    def code_tokens(self, index: int) -> np.ndarray:
        return self.code_ids[index]

    def token_ids(self, side: str) -> RaggedIds:
        return {"query": self.query_ids, "code": self.code_ids}[side]

    def collate(
        self, pair_ids: np.ndarray, side: str, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L] ids and 0/1 mask of one side, padded to this batch's longest sequence."""
        token_ids = self.token_ids(side)
        input_ids, mask = pad_batch([token_ids[i] for i in pair_ids], self.pad_id)
        return input_ids.to(device), mask.to(device)


_CACHE_ARRAYS = ("query_ids", "query_offsets", "code_ids", "code_offsets", "query_key", "code_key")


def _cache_key(records: PairRecords, data_config: DataConfig, encoder) -> str:
    described = {
        "format": CACHE_FORMAT,
        "data": records.content_hash,
        "fields": [data_config.query_field, data_config.code_field],
        "tokenizer": encoder.tokenizer_fingerprint(),
        "max_seq_len": encoder.max_seq_len,
    }
    return hashlib.blake2b(json.dumps(described, sort_keys=True).encode(), digest_size=12).hexdigest()


def _tokenize_all(encoder, texts: list[str], side: str) -> RaggedIds:
    rows: list[np.ndarray] = []
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = texts[start : start + _TOKENIZE_CHUNK]
        ids = encoder.tokenize(chunk, side)
        if len(ids) != len(chunk):
            raise DualencError(f"encoder.tokenize returned {len(ids)} sequences for {len(chunk)} texts")
        rows.extend(np.asarray(row, dtype=np.int32) for row in ids)
    return RaggedIds.from_arrays(rows)


def _load_cached(directory: Path, count: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, memory-mapped, or None when absent or inconsistent."""
    if not (directory / "info.json").is_file():  # written last: its presence marks a whole cache
        return None
    try:
        arrays = {}
        for name in _CACHE_ARRAYS:
            arrays[name] = np.load(directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable token cache, rebuilding (%s)", directory, exc)
        return None
    consistent = all(len(arrays[f"{side}_offsets"]) == count + 1 for side in ("query", "code")) and all(
        len(arrays[f"{side}_key"]) == count and arrays[f"{side}_offsets"][-1] == len(arrays[f"{side}_ids"])
        for side in ("query", "code")
    )
    if not consistent:
        logger.warning("%s: token cache does not match the data, rebuilding", directory)
        return None
    return arrays


def _write_cache(directory: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    """Write into a temporary folder, then rename it into place: readers never see half a cache.

    A cache that cannot be written (read-only folder, full disk) costs only a warning.
    """
    temporary = directory.with_name(f".{directory.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        temporary.mkdir(parents=True)
        for name, array in arrays.items():
            np.save(temporary / f"{name}.npy", array, allow_pickle=False)
        (temporary / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        if directory.exists():  # an inconsistent cache left by an older or killed run
            shutil.rmtree(directory)
        os.rename(temporary, directory)
    except OSError as exc:
        # unless another process finished the same cache first: its copy is as good as ours
        if not (directory / "info.json").is_file():
            logger.warning("%s: cannot write the token cache, going on without it (%s)", directory, exc)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def load_pair_set(path: str | Path, data_config: DataConfig, encoder) -> PairSet:
    """Read ``path`` and tokenize both sides once with ``encoder``.

    Token ids and dedup keys are cached under ``data_config.cache_dir`` as ``.npy`` files,
    keyed by the data's content hash, the field names, ``encoder.tokenizer_fingerprint()``
    and ``encoder.max_seq_len``; a later call with the same inputs memory-maps them and
    tokenizes nothing.
    """
    records = read_pairs(path, data_config.query_field, data_config.code_field, data_config.on_bad_record)
    count = len(records.queries)
    directory = Path(data_config.cache_dir) / f"pairs-{_cache_key(records, data_config, encoder)}"
    arrays = _load_cached(directory, count)
    if arrays is None:
        started = time.perf_counter()
        query_ids = _tokenize_all(encoder, records.queries, "query")
        code_ids = _tokenize_all(encoder, records.codes, "code")
        arrays = {
            "query_ids": query_ids.flat,
            "query_offsets": query_ids.offsets,
            "code_ids": code_ids.flat,
            "code_offsets": code_ids.offsets,
            "query_key": np.array([query_key(q) for q in records.queries], dtype=np.int64),
            "code_key": np.array([normalised_code_key(c) for c in records.codes], dtype=np.int64),
        }
        info = {
            "source": str(path),
            "pairs": count,
            "tokenizer": encoder.tokenizer_fingerprint(),
            "max_seq_len": encoder.max_seq_len,
        }
        _write_cache(directory, arrays, info)
        logger.info(
            "%s: tokenized %d pairs in %.1fs, cached in %s",
            path,
            count,
            time.perf_counter() - started,
            directory,
        )
    else:
        logger.info("%s: %d pairs, token ids from cache %s", path, count, directory)
    return PairSet(
        queries=records.queries,
        codes=records.codes,
        query_key=np.asarray(arrays["query_key"]),
        code_key=np.asarray(arrays["code_key"]),
        query_ids=RaggedIds(arrays["query_ids"], arrays["query_offsets"]),
        code_ids=RaggedIds(arrays["code_ids"], arrays["code_offsets"]),
        metadata=records.metadata,
        skipped=records.skipped,
        pad_id=encoder.pad_id,
    )


# --- batching --------------------------------------------------------------------------

# An encoder call has a fixed cost (Python, dispatch, small kernels) that one sequence's worth
# of tokens would hide: on a 2-core CPU, a MiniLM forward and backward costs about this many
# tokens more per call. Splitting a batch must save more padding than that.
GROUP_OVERHEAD_TOKENS = 64
MAX_LENGTH_GROUPS = 4


def length_groups(
    lengths: np.ndarray, max_groups: int = MAX_LENGTH_GROUPS, overhead: int = GROUP_OVERHEAD_TOKENS
) -> list[np.ndarray]:
    """Positions into ``lengths``, split into at most ``max_groups`` groups of similar length.

    Each group is encoded on its own, padded to its longest; the split minimises the tokens
    computed plus ``overhead`` per group (exactly, by dynamic programming over the sorted
    lengths). Buckets make code lengths alike already; queries that come with them are not.
    """
    order = np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths, dtype=np.int64)[order]
    count = len(ordered)
    starts = np.arange(count)
    # least[j]: the least tokens computed for the j shortest in the groups so far; cuts: where
    # each prefix's last group starts, per number of groups
    least = np.full(count + 1, np.inf)
    least[0] = 0.0
    cuts: list[np.ndarray] = []
    best_groups, best_cost = 0, np.inf
    for groups in range(1, min(max_groups, count) + 1):
        previous, least = least, np.full(count + 1, np.inf)
        cut = np.zeros(count + 1, dtype=np.int64)
        for end in range(1, count + 1):
            costs = previous[:end] + ordered[end - 1] * (end - starts[:end])
            cut[end] = int(np.argmin(costs))
            least[end] = costs[cut[end]]
        cuts.append(cut)
        if least[count] + overhead * groups < best_cost:
            best_groups, best_cost = groups, least[count] + overhead * groups
    bounds = [count]
    for cut in reversed(cuts[:best_groups]):
        bounds.append(int(cut[bounds[-1]]))
    bounds.reverse()
    return [order[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]


def computed_tokens(lengths: np.ndarray) -> int:
    """Tokens an encoder computes for ``lengths`` when they are encoded in ``length_groups``."""
    return sum(int(lengths[group].max()) * len(group) for group in length_groups(lengths))


class BucketBatchSampler:
    """Endless batches of pair ids: similar lengths together, no duplicate keys in a batch.

    Each epoch, pairs are shuffled and cut into windows of ``window`` batches; a
    window is sorted by code length, then query length, and cut into batches, which are
    then shuffled across the epoch. A pair whose code key or query key is already in the
    batch being filled waits for a later batch (it would be a false in-batch negative).
    Pairs that find no place in their window move on to the next; at the end of the epoch
    they form the last, possibly smaller, batches, so every pair is used once per epoch.

    With ``num_replicas > 1`` every rank computes the same epoch (same ``seed``), keeps
    only full batches, drops the remainder so the count divides evenly, and takes batches
    ``rank, rank + num_replicas, ...``: all ranks get the same number of equal-size batches.
    """

    def __init__(
        self,
        pairs: PairSet,
        batch_size: int,
        *,
        seed: int = 0,
        window: int = 64,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        count = len(pairs)
        if count == 0:
            raise DualencError("no pairs to batch")
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if num_replicas > 1 and count < batch_size * num_replicas:
            raise DualencError(
                f"{count} pairs cannot fill one batch of {batch_size} for each of {num_replicas} replicas"
            )
        self.code_lengths = pairs.code_ids.lengths
        self.query_lengths = pairs.query_ids.lengths
        # plain ints: set lookups on numpy scalars are several times slower
        self._code_key = np.asarray(pairs.code_key).tolist()
        self._query_key = np.asarray(pairs.query_key).tolist()
        self.batch_size = batch_size
        self.window = window
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.position = 0  # batches of ``epoch`` already handed out to this rank
        self._memo: tuple[int, list[np.ndarray]] | None = None
        # tokens computed and padded in the batches handed out since ``padding_fraction()``
        self._computed = 0
        self._padded = 0

    def _fill(self, ordered: list[int], final: bool) -> tuple[list[list[int]], list[int]]:
        """Batches cut from ``ordered`` and the pairs left over (none when ``final``)."""
        batches: list[list[int]] = []
        pending = ordered
        while pending:
            batch: list[int] = []
            deferred: list[int] = []
            codes: set[int] = set()
            queries: set[int] = set()
            for index, pair in enumerate(pending):
                if len(batch) == self.batch_size:
                    deferred.extend(pending[index:])
                    break
                code, query = self._code_key[pair], self._query_key[pair]
                if code in codes or query in queries:
                    deferred.append(pair)
                    continue
                batch.append(pair)
                codes.add(code)
                queries.add(query)
            if len(batch) < self.batch_size and not final:
                return batches, pending
            batches.append(batch)
            pending = deferred
        return batches, []

    def _all_batches(self, epoch: int) -> list[list[int]]:
        """The whole epoch's batches, in order, before sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.code_lengths))
        window = self.window * self.batch_size
        batches: list[list[int]] = []
        leftover = np.zeros(0, dtype=order.dtype)
        for start in range(0, len(order), window):
            ids = np.concatenate([leftover, order[start : start + window]])
            ids = ids[np.lexsort((self.query_lengths[ids], self.code_lengths[ids]))]
            filled, left = self._fill(ids.tolist(), final=False)
            batches.extend(filled)
            leftover = np.asarray(left, dtype=order.dtype)
        batches.extend(self._fill(leftover.tolist(), final=True)[0])
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of ``epoch``: arrays of pair ids."""
        if self._memo is None or self._memo[0] != epoch:
            batches = self._all_batches(epoch)
            if self.num_replicas > 1:
                batches = [batch for batch in batches if len(batch) == self.batch_size]
                usable = len(batches) // self.num_replicas * self.num_replicas
                batches = batches[self.rank : usable : self.num_replicas]
            if not batches:
                raise DualencError(
                    f"epoch {epoch} has no batch for rank {self.rank}: too few distinct pairs for "
                    f"{self.num_replicas} replicas of batch size {self.batch_size}"
                )
            self._memo = (epoch, [np.asarray(batch, dtype=np.int64) for batch in batches])
        return self._memo[1]

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            batches = self.epoch_batches(self.epoch)
            if self.position >= len(batches):
                self.epoch += 1
                self.position = 0
                continue
            batch = batches[self.position]
            self.position += 1
            for lengths in (self.query_lengths[batch], self.code_lengths[batch]):
                computed = computed_tokens(lengths)
                self._computed += computed
                self._padded += computed - int(lengths.sum())
            yield batch

    def padding_fraction(self) -> float:
        """Padding share (both sides) of the batches handed out since the previous call."""
        fraction = self._padded / self._computed if self._computed else 0.0
        self._computed = self._padded = 0
        return fraction

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


def padding_fraction(
    pairs: PairSet,
    batches: Sequence[np.ndarray],
    sides: Sequence[str] = ("query", "code"),
    grouped: bool = True,
) -> float:
    """Padding tokens / all tokens computed over ``sides``, each side of a batch encoded in
    ``length_groups`` (as training does) or, without ``grouped``, padded to its longest."""
    padded = 0
    computed = 0
    for batch in batches:
        for side in sides:
            lengths = pairs.token_ids(side).lengths[batch]
            side_computed = computed_tokens(lengths) if grouped else int(lengths.max()) * len(batch)
            computed += side_computed
            padded += side_computed - int(lengths.sum())
    return padded / computed if computed else 0.0


# --- evaluation ------------------------------------------------------------------------


def eval_set_from_pairs(
    queries: Sequence[str], codes: Sequence[str], name: str, max_pairs: int | None = None
) -> EvalSet:
    """Each distinct query ranked against the distinct codes of the first ``max_pairs`` pairs.

    Queries are distinct by ``query_key``, pool items by ``normalised_code_key``; a query's
    relevant set is every pool item that one of its pairs points to.
    """
    if len(queries) != len(codes):
        raise ValueError("queries and codes must pair up")
    limit = len(queries) if max_pairs is None else min(max_pairs, len(queries))
    pool: list[str] = []
    pool_index: dict[int, int] = {}
    unique_queries: list[str] = []
    relevant: list[dict[int, float]] = []
    query_index: dict[int, int] = {}
    for query, code in zip(queries[:limit], codes[:limit], strict=True):
        item = pool_index.setdefault(normalised_code_key(code), len(pool))
        if item == len(pool):
            pool.append(code)
        row = query_index.setdefault(query_key(query), len(unique_queries))
        if row == len(unique_queries):
            unique_queries.append(query)
            relevant.append({})
        relevant[row][item] = 1.0
    return EvalSet(name=name, queries=unique_queries, pool=pool, relevant=relevant)


def load_eval_set(path: str | Path, data_config: DataConfig, name: str = "val") -> EvalSet:
    """The evaluation set of a pairs file, honouring ``data_config.max_val_pairs``."""
    records = read_pairs(path, data_config.query_field, data_config.code_field, data_config.on_bad_record)
    return eval_set_from_pairs(records.queries, records.codes, name, max_pairs=data_config.max_val_pairs)
