"""``transformer``: the seed's encoder, trained from scratch (implementation in progress)."""

import attrs

from dualenc import hookimpl
from dualenc.core.config import at_least


@attrs.frozen
class TransformerOptions:
    vocab_size: int = attrs.field(default=50257, validator=at_least(256))
    d_model: int = attrs.field(default=768, validator=at_least(8))
    n_layers: int = attrs.field(default=6, validator=at_least(1))
    n_heads: int = attrs.field(default=12, validator=at_least(1))
    max_seq_len: int = attrs.field(default=512, validator=at_least(8))
    dropout: float = attrs.field(default=0.1, validator=at_least(0))
    # separate query and code towers instead of one shared encoder
    separate_towers: bool = False
    # a tokenizer.json to use as is; None trains a byte-level BPE on the training texts
    tokenizer: str | None = None


def create(options: TransformerOptions):
    raise NotImplementedError("the transformer encoder is being built")


@hookimpl
def register_encoders(register):
    register(
        "transformer",
        create,
        options=TransformerOptions,
        description="Pre-norm transformer trained from scratch with its own BPE tokenizer.",
    )
