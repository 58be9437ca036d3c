"""``transformer``: the seed's encoder, trained from scratch with its own byte-level BPE.

A pre-norm transformer encoder (learned positions, GELU feed-forward, fused
scaled-dot-product attention with a padding mask, dropout drawn by dualenc.dropout),
mean-pooled over real tokens and L2-normalised. Query and code share one tower unless
``separate_towers`` is set; two towers still share the token embedding, as they share the
tokenizer (Dong et al. 2022, "Exploring Dual Encoder Architectures for Question Answering",
found that sharing it helps).

At the seed's defaults (vocab 50257, d_model 768, 6 layers, 512 positions) the model has
76.8M parameters with the default feed-forward width of 10/3 * d_model = 2560: the seed's
~77M. A 4 * d_model feed-forward would give 81.5M; torch's default 2048 gives 72.1M.

Query and code prompts are prepended before tokenizing; ``save`` records them in
config_sentence_transformers.json, which a loaded checkpoint takes them from (see ``prompts``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dualenc import SIDES, DualencError, Register, at_least, hookimpl, load_weights
from dualenc.dropout import Dropout, attention
from dualenc.plugins.encoders.prompts import (
    max_len_field,
    read_st_config,
    resolve_prompts,
    side_max_lengths,
    write_prompts,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# the trained tokenizer's special tokens; "<pad>" comes first so that it is id 0
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"


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
    # hidden width of the feed-forward layers; None: 10/3 * d_model (2560 at d_model 768)
    ffn_dim: int | None = attrs.field(default=None, validator=at_least(1))
    # prepended to each query / code text; None: none, or a loaded checkpoint's own
    query_prefix: str | None = None
    code_prefix: str | None = None
    # each side's truncation length, at most max_seq_len (the positions); None: max_seq_len
    query_max_len: int | None = max_len_field()
    code_max_len: int | None = max_len_field()

    @n_heads.validator
    def _divides_d_model(self, attribute, value):
        if value >= 1 and self.d_model % value:
            raise ValueError(f"must divide d_model ({self.d_model}) (got {value})")


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of up to ``vocab_size`` tokens (never fewer than 256 bytes + 3 specials)
    that wraps each text in <s> ... </s>."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        # every byte is a token, so no text is ever out of vocabulary
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (BOS_TOKEN, EOS_TOKEN)],
    )
    return tokenizer


class Block(torch.nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + feed_forward(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.attention_norm = torch.nn.LayerNorm(d_model)
        self.qkv = torch.nn.Linear(d_model, 3 * d_model)
        self.attention_out = torch.nn.Linear(d_model, d_model)
        self.ffn_norm = torch.nn.LayerNorm(d_model)
        self.ffn_in = torch.nn.Linear(d_model, ffn_dim)
        self.ffn_out = torch.nn.Linear(ffn_dim, d_model)
        self.residual_dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.n_heads, width // self.n_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, L, head_dim]
        attended = attention(query, key, value, key_mask, self.dropout if self.training else 0.0)
        x = x + self.residual_dropout(
            self.attention_out(attended.transpose(1, 2).reshape(batch, length, width))
        )
        return x + self.residual_dropout(self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x)))))


class Tower(torch.nn.Module):
    """Token embeddings -> one mean-pooled vector per sequence (not yet normalised)."""

    def __init__(self, options: TransformerOptions, ffn_dim: int):
        super().__init__()
        self.positions = torch.nn.Embedding(options.max_seq_len, options.d_model)
        self.embedding_dropout = Dropout(options.dropout)
        self.blocks = torch.nn.ModuleList(
            Block(options.d_model, options.n_heads, ffn_dim, options.dropout) for _ in range(options.n_layers)
        )
        self.final_norm = torch.nn.LayerNorm(options.d_model)

    def forward(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = token_embeddings.shape[1]
        x = self.embedding_dropout(token_embeddings + self.positions.weight[:length])
        # [B, 1, 1, L]: every query position attends to the real tokens only
        key_mask = attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            x = block(x, key_mask)
        hidden = self.final_norm(x).float()  # pool in fp32 even under bf16 autocast
        real = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)


class TransformerEncoder(torch.nn.Module):
    # norm before each sublayer, one final norm, no token-type embeddings and no embedding
    # norm: BERT and its relatives normalise after each sublayer, so no standard Hugging Face
    # architecture computes this function, and an export would only approximate it
    sentence_transformers_unsupported = (
        "the sentence-transformers export supports encoders built on a Hugging Face model "
        "(plugin 'hf') only; the 'transformer' encoder's pre-norm architecture has no exact Hugging "
        "Face equivalent. Export it with --format onnx (ONNX Runtime runs it with its tokenizer.json), "
        "or train with encoder 'hf'."
    )

    @property
    def shared_tower(self) -> bool:
        """Whether both sides go through one tower: ``dualenc export --format onnx`` then writes
        one graph."""
        return not self.options.separate_towers

    # a checkpoint may be loaded with other values of these (a resume with a changed config; a
    # changed prompt is logged); every other option changes the weights' shapes or the
    # tokenizer the weights were trained with
    options_changeable_on_load = ("dropout", "query_prefix", "code_prefix", "query_max_len", "code_max_len")

    def __init__(self, options: TransformerOptions):
        super().__init__()
        self.options = options
        self.dim = options.d_model
        self.max_lengths = side_max_lengths(options)
        # the longest sequence tokenize gives; options.max_seq_len is the number of positions
        self.max_seq_len = max(self.max_lengths.values())
        self.prompts = resolve_prompts(options, {})
        # padded positions are masked out of attention and pooling, so any valid id works
        self.pad_id = 0
        ffn_dim = options.ffn_dim or 10 * options.d_model // 3
        self.token_embedding = torch.nn.Embedding(options.vocab_size, options.d_model)
        tower_names = SIDES if options.separate_towers else ("shared",)
        self.towers = torch.nn.ModuleDict({name: Tower(options, ffn_dim) for name in tower_names})
        self._initialise_weights()
        self._tokenizer: Tokenizer | None = None
        log.info("transformer encoder: %d parameters", self.num_parameters)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _initialise_weights(self) -> None:
        # GPT-2's scheme: N(0, 0.02), with the projections that write into the residual
        # stream scaled down by the depth so the stream's variance does not grow with it
        residual_std = 0.02 / math.sqrt(2 * self.options.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                std = residual_std if name.endswith(("attention_out", "ffn_out")) else 0.02
                torch.nn.init.normal_(module.weight, std=std)
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.zeros_(module.bias)

    # --- tokenizer ---------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._read_given_tokenizer()
        return self._tokenizer

    def _read_given_tokenizer(self) -> None:
        if self.options.tokenizer is None:
            raise DualencError(
                "the transformer encoder has no tokenizer yet: call prepare(texts) with the training "
                "texts, or set encoder.tokenizer to a tokenizer.json"
            )
        self._use_tokenizer(Path(self.options.tokenizer))

    def _use_tokenizer(self, source: Path | Tokenizer) -> None:
        if isinstance(source, Tokenizer):
            tokenizer = source
        else:
            if not source.is_file():
                raise DualencError(f"{source}: tokenizer file not found")
            tokenizer = Tokenizer.from_file(str(source))
        if tokenizer.get_vocab_size() > self.options.vocab_size:
            raise DualencError(
                f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the encoder's vocab_size is "
                f"{self.options.vocab_size}; raise encoder.vocab_size"
            )
        tokenizer.no_padding()  # batches are padded per batch by the caller
        tokenizer.enable_truncation(max_length=self.options.max_seq_len)
        self._tokenizer = tokenizer
        # one copy per side, each truncating at its side's length: tokenize never changes a
        # tokenizer's settings, so concurrent calls (a Retriever shared by threads) are safe
        self._side_tokenizers = {}
        for side in SIDES:
            self._side_tokenizers[side] = Tokenizer.from_str(tokenizer.to_str())
            self._side_tokenizers[side].enable_truncation(max_length=self.max_lengths[side])

    def prepare(self, texts: Iterable[str]) -> None:
        if self._tokenizer is not None:
            return  # loaded with the weights it belongs to
        if self.options.tokenizer is not None:
            # used as is; reading it now makes a bad path fail before training, not at first use
            self._read_given_tokenizer()
            return
        self._use_tokenizer(train_byte_level_bpe(texts, self.options.vocab_size))
        log.info("trained a byte-level BPE of %d tokens", self._tokenizer.get_vocab_size())

    def tokenizer_fingerprint(self) -> str:
        # prompts and truncation lengths change the ids as much as the tokenizer does
        described = {
            "tokenizer": self.tokenizer.to_str(),
            "prompts": self.prompts,
            "max_lengths": self.max_lengths,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def tokenize(self, texts: Sequence[str], side: str) -> list[np.ndarray]:
        """Token ids of ``prompts[side] + text``, truncated to ``max_lengths[side]`` (the final
        </s> kept)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} (got {side!r})")
        if self._tokenizer is None:
            self._read_given_tokenizer()
        prompt = self.prompts[side]
        texts = [prompt + text for text in texts] if prompt else list(texts)
        return [np.asarray(e.ids, dtype=np.int32) for e in self._side_tokenizers[side].encode_batch(texts)]

    # --- model -------------------------------------------------------------------------

    def _tower(self, side: str) -> Tower:
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} (got {side!r})")
        return self.towers[side if self.options.separate_towers else "shared"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: str) -> torch.Tensor:
        if input_ids.shape[1] > self.options.max_seq_len:
            raise ValueError(
                f"sequences of {input_ids.shape[1]} tokens exceed max_seq_len {self.options.max_seq_len}"
            )
        pooled = self._tower(side)(self.token_embedding(input_ids), attention_mask)
        return F.normalize(pooled, dim=-1)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        save_model(self, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        write_prompts(directory, self.prompts)

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise DualencError(f"{directory}: no {WEIGHTS_FILE}")
        self._use_tokenizer(directory / TOKENIZER_FILE)
        # a checkpoint saved before prompts existed has none: it was trained without
        self.prompts = resolve_prompts(self.options, read_st_config(directory), directory, checkpoint=True)
        device = str(self.token_embedding.weight.device)
        load_weights(self, weights, device, describes=f"the options in {directory / 'encoder.json'}")


@hookimpl
def register_encoders(register: Register):
    register(
        "transformer",
        TransformerEncoder,
        options=TransformerOptions,
        description="Pre-norm transformer trained from scratch with its own BPE tokenizer.",
    )
