"""The run configuration: frozen attrs classes with validators.

Each component's block (``encoder:``, ``loss:``, ``miner:``, ``evaluator:``, ``trackers:``)
holds that component's own options; ``configio`` structures it into the options class the
selected plugin registered. Seed spellings (``model:``, ``training:``,
``use_hard_negatives``) are translated in ``configio`` only.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import attrs

from dualenc.validators import at_least, greater_than, non_empty, one_of


def usable_device(instance, attribute, value) -> None:
    """A device this torch can use here. torch is imported only for names other than auto and
    cpu: the defaults load without it, and only a cuda name asks whether CUDA is there."""
    if not isinstance(value, str) or value in ("auto", "cpu"):
        return
    from dualenc.core.device import device_problem

    problem = device_problem(value)
    if problem is not None:
        raise ValueError(problem)


@attrs.frozen
class PluginSelection:
    """Which registered component to use for each kind (``--plugin kind=name`` overrides)."""

    encoder: str = attrs.field(default="transformer", validator=non_empty)
    loss: str = attrs.field(default="infonce", validator=non_empty)
    miner: str = attrs.field(default="none", validator=non_empty)
    evaluator: str = attrs.field(default="mrr", validator=non_empty)
    # metrics.jsonl is always written in addition to these
    trackers: tuple[str, ...] = attrs.field(default=("aim", "console"))


@attrs.frozen
class TrainFile:
    """One of ``data.train_files``: a JSONL or parquet file and its weight.

    Per epoch the file contributes ``weight`` times its pairs: 2 repeats every pair twice,
    0.5 draws half of them (a different half each epoch, from ``train.seed`` and the epoch).
    """

    path: str = attrs.field(validator=non_empty)
    weight: float = attrs.field(default=1.0)

    @weight.validator
    def _positive(self, attribute, value) -> None:
        # the message names the file: a config error reads data.train_files, without the index
        if not value > 0:
            raise ValueError(f"{self.path}: weight must be > 0 (got {value})")


DEFAULT_TRAIN_FILE = "data/code_pairs/train.jsonl"


def not_with_train_file(instance, attribute, value) -> None:
    if value and instance.train_file != DEFAULT_TRAIN_FILE:
        raise ValueError(f"give data.train_file ({instance.train_file}) or data.train_files, not both")


def distinct_fields(instance, attribute, value) -> None:
    names = (instance.query_field, instance.code_field, instance.positives_field, instance.negatives_field)
    if len(set(names)) < len(names):
        fields = "query_field, code_field, positives_field and negatives_field"
        raise ValueError(f"{fields} must differ (got {', '.join(names)})")


def only_with(other: str, what: str):
    """A validator: the field may be set only when the field ``other`` is."""

    def check(instance, attribute, value) -> None:
        if value is not None and getattr(instance, other) is None:
            raise ValueError(f"only {what} takes {attribute.name}")

    return check


def not_with_benchmark(instance, attribute, value) -> None:
    if value is not None and instance.benchmark is not None:
        raise ValueError("give file or benchmark, not both")


def known_benchmark(instance, attribute, value) -> None:
    from dualenc.core.data.evalsets import BENCHMARKS
    from dualenc.core.io import did_you_mean

    if value is not None and value not in BENCHMARKS:
        raise ValueError(
            f"unknown benchmark {value!r}; benchmarks: {', '.join(BENCHMARKS)}"
            + did_you_mean(value, BENCHMARKS)
        )


def benchmark_split(instance, attribute, value) -> None:
    from dualenc.core.data.evalsets import BENCHMARKS

    splits = BENCHMARKS.get(instance.benchmark, {})
    if value is not None and splits and value not in splits:
        raise ValueError(f"unknown {instance.benchmark} split {value!r}; splits: {', '.join(splits)}")


@attrs.frozen
class ValSet:
    """One of ``data.val_sets``: a JSONL file of pairs, or a benchmark's split."""

    # ``name: path.jsonl`` in a config is short for ``name: {file: path.jsonl}``
    shorthand: ClassVar[str] = "file"

    # (query, code) pairs read with data's field names; the pool is their distinct codes
    file: str | None = attrs.field(default=None, validator=not_with_benchmark)
    # evaluate on at most this many of the file's pairs (None: data.max_val_pairs)
    max_pairs: int | None = attrs.field(
        default=None, validator=[at_least(1), only_with("file", "a file set")]
    )
    # or a benchmark: "cosqa"
    benchmark: str | None = attrs.field(default=None, validator=known_benchmark)
    # None: "dev"
    split: str | None = attrs.field(
        default=None, validator=[only_with("benchmark", "a benchmark set"), benchmark_split]
    )
    # the benchmark's folder (None: $DUALENC_COSQA_DIR, else ../shared/benchmarks/cosqa)
    dir: str | None = attrs.field(default=None, validator=only_with("benchmark", "a benchmark set"))


DEFAULT_VAL_FILE = "data/code_pairs/val.jsonl"
# a set's name is part of metric names (val/<name>/mrr) and of the best checkpoint's folder
VAL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def val_sets_check(instance, attribute, value) -> None:
    if value and instance.val_file != DEFAULT_VAL_FILE:
        raise ValueError(
            f"give data.val_file ({instance.val_file}) or data.val_sets, not both "
            "(to keep the file, name it in val_sets)"
        )
    for name, val_set in value.items():
        if not VAL_SET_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r}: a set's name is letters, digits, '_', '-', '.' (first a letter or digit)"
            )
        if val_set.file is None and val_set.benchmark is None:
            raise ValueError(f"{name}: give file: PAIRS.jsonl or benchmark: NAME")


@attrs.frozen
class DataConfig:
    train_file: str = DEFAULT_TRAIN_FILE
    # several training files with weights, replacing train_file: [{path: a.jsonl, weight: 2}, ...]
    train_files: tuple[TrainFile, ...] = attrs.field(default=(), validator=not_with_train_file)
    val_file: str = DEFAULT_VAL_FILE
    # several named validation sets, replacing val_file: {name: FILE | {file, max_pairs} |
    # {benchmark, split, dir}}, each logged as val/<name>/<metric>
    val_sets: dict[str, ValSet] = attrs.field(factory=dict, validator=val_sets_check)
    query_field: str = attrs.field(default="query", validator=non_empty)
    code_field: str = attrs.field(default="code", validator=non_empty)
    # FlagEmbedding's rows: {query, pos: [code, ...], neg: [...]}, one pair per positive
    positives_field: str = attrs.field(default="pos", validator=non_empty)
    # provided negatives of a row (a list of codes), used in the loss with the mined ones
    negatives_field: str = attrs.field(default="neg", validator=[non_empty, distinct_fields])
    # use at most this many provided negatives per pair, the first ones of its row (None: all)
    max_provided_negatives: int | None = attrs.field(default=None, validator=at_least(0))
    # "error": stop before training at the first bad line; "skip": drop it and report counts
    on_bad_record: str = attrs.field(default="error", validator=one_of("error", "skip"))
    # token ids are cached here, keyed by data and tokenizer hashes
    cache_dir: str = ".dualenc-cache"
    # the shuffled window within which batches are formed from pairs of similar length
    bucket_window: int = attrs.field(default=64, validator=at_least(1))
    # evaluate on at most this many validation pairs (None: all)
    max_val_pairs: int | None = attrs.field(default=None, validator=at_least(1))

    def training_files(self) -> tuple[TrainFile, ...]:
        """``train_files``, or ``train_file`` with weight 1."""
        return self.train_files or (TrainFile(self.train_file),)


def validation_metric(instance, attribute, value) -> None:
    if value is not None and not value.startswith("val/"):
        raise ValueError(f"expected a validation metric's name: 'val/mrr', 'val/<set>/mrr' (got {value!r})")


@attrs.frozen
class TrainConfig:
    batch_size: int = attrs.field(default=32, validator=at_least(1))
    learning_rate: float = attrs.field(default=1e-4, validator=greater_than(0))
    max_steps: int = attrs.field(default=50000, validator=at_least(1))
    # stop at the first step boundary once this many seconds of the training loop's wall time
    # have passed, summed over resumes (None: no limit); the schedule still runs on max_steps
    max_train_seconds: float | None = attrs.field(default=None, validator=greater_than(0))
    warmup_steps: int = attrs.field(default=1000, validator=at_least(0))
    # after warmup: "linear" decay to 0 at max_steps, "cosine", or "constant"
    schedule: str = attrs.field(default="linear", validator=one_of("linear", "cosine", "constant"))
    weight_decay: float = attrs.field(default=0.01, validator=at_least(0))
    # max gradient norm; 0 turns clipping off
    grad_clip: float = attrs.field(default=1.0, validator=at_least(0))
    eval_interval: int = attrs.field(default=1000, validator=at_least(1))
    save_interval: int = attrs.field(default=1000, validator=at_least(1))
    # periodic checkpoints kept besides last/ and the best one
    keep_last: int = attrs.field(default=2, validator=at_least(0))
    log_interval: int = attrs.field(default=10, validator=at_least(1))
    seed: int = 42
    # "auto": bf16 autocast on GPUs that support it and on CPUs whose native bf16 a short probe
    # measures faster than fp32, else fp32
    precision: str = attrs.field(default="auto", validator=one_of("auto", "fp32", "bf16"))
    # torch.compile the encoder for the training step (evaluation and mining run it as is)
    compile: bool = False
    # "auto", "cpu", "cuda" or "cuda:N": checked against what this torch can use when loaded
    device: str = attrs.field(default="auto", validator=usable_device)
    # GradCache: encode the batch in chunks of this many pairs (None: all at once)
    grad_cache_chunk: int | None = attrs.field(default=None, validator=at_least(1))
    # evaluate once before the first step, so every run logs its starting point
    eval_at_start: bool = True
    # the logged metric that picks the best checkpoint, e.g. "val/cosqa/mrr" (None: the
    # evaluator's primary metric on the first validation set, "val/mrr" with data.val_file)
    best_metric: str | None = attrs.field(default=None, validator=validation_metric)
    # "max" for scores (mrr, ndcg@10), "min" for ranks and losses
    best_mode: str = attrs.field(default="max", validator=one_of("max", "min"))
    # stop after this many evaluations in a row that do not beat the best best_metric by more
    # than early_stopping_min_delta (None: never stop early)
    early_stopping_patience: int | None = attrs.field(default=None, validator=at_least(1))
    early_stopping_min_delta: float = attrs.field(default=0.0, validator=at_least(0))
    # under torchrun: score each query against the embeddings of every rank (more negatives)
    gather_across_ranks: bool = True
    # a collective that waits longer than this (a rank died) fails the run
    dist_timeout_s: int = attrs.field(default=300, validator=at_least(1))


@attrs.frozen
class RetrievalConfig:
    """The seed's retrieval block, read by ``Retriever.from_config``."""

    enabled: bool = False
    encoder_checkpoint: str = "checkpoints/encoder/encoder-best-mrr"
    faiss_index: str = "indices/global_kb"


@attrs.frozen
class RunConfig:
    plugins: PluginSelection = PluginSelection()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    # each holds the selected component's options object once the config is resolved
    encoder: Any = attrs.field(factory=dict)
    loss: Any = attrs.field(factory=dict)
    miner: Any = attrs.field(factory=dict)
    evaluator: Any = attrs.field(factory=dict)
    # tracker name -> its options
    trackers: dict[str, Any] = attrs.field(factory=dict)
    retrieval: RetrievalConfig = RetrievalConfig()
    output_dir: str = attrs.field(default="checkpoints/encoder", validator=non_empty)
