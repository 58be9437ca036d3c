"""The run configuration: frozen attrs classes with validators.

Each component's block (``encoder:``, ``loss:``, ``miner:``, ``evaluator:``, ``trackers:``)
holds that component's own options; ``configio`` structures it into the options class the
selected plugin registered. Seed spellings (``model:``, ``training:``,
``use_hard_negatives``) are translated in ``configio`` only.
"""

from __future__ import annotations

from typing import Any

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
class DataConfig:
    train_file: str = "data/code_pairs/train.jsonl"
    val_file: str = "data/code_pairs/val.jsonl"
    query_field: str = attrs.field(default="query", validator=non_empty)
    code_field: str = attrs.field(default="code", validator=non_empty)
    # "error": stop before training at the first bad line; "skip": drop it and report counts
    on_bad_record: str = attrs.field(default="error", validator=one_of("error", "skip"))
    # token ids are cached here, keyed by data and tokenizer hashes
    cache_dir: str = ".dualenc-cache"
    # the shuffled window within which batches are formed from pairs of similar length
    bucket_window: int = attrs.field(default=64, validator=at_least(1))
    # evaluate on at most this many validation pairs (None: all)
    max_val_pairs: int | None = attrs.field(default=None, validator=at_least(1))


@attrs.frozen
class TrainConfig:
    batch_size: int = attrs.field(default=32, validator=at_least(1))
    learning_rate: float = attrs.field(default=1e-4, validator=greater_than(0))
    max_steps: int = attrs.field(default=50000, validator=at_least(1))
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
    # "auto": bf16 autocast where the device supports it, else fp32
    precision: str = attrs.field(default="auto", validator=one_of("auto", "fp32", "bf16"))
    # "auto", "cpu", "cuda" or "cuda:N": checked against what this torch can use when loaded
    device: str = attrs.field(default="auto", validator=usable_device)
    # GradCache: encode the batch in chunks of this many pairs (None: all at once)
    grad_cache_chunk: int | None = attrs.field(default=None, validator=at_least(1))
    # evaluate once before the first step, so every run logs its starting point
    eval_at_start: bool = True
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
