"""The suite's test doubles: a tiny real encoder, pair and JSONL files, throwaway plugin distributions.

Test files import it as ``fakes``: pyproject.toml's pytest ``pythonpath`` puts tests/ on sys.path,
for contrib/dualenc-wandb/tests as well.
"""

from __future__ import annotations

import json
import re
import textwrap
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from dualenc import load_config

PAD_ID, START_ID, FIRST_WORD_ID = 0, 1, 2


class TinyEncoder(torch.nn.Module):
    """A small real encoder: a start id and one id per word -> embedding rows -> masked mean -> unit vector.

    Words are the lowercase runs of letters and digits, hashed (crc32) to rows 2..vocab_size-1
    of a table drawn from ``seed``. The padding and start rows are zero, so the start id counts
    in lengths only. ``word_vectors`` ({word: vector}) fixes the vocabulary and each word's row
    instead: a one-word text then encodes to its word's vector, scores known in advance.
    ``texts_tokenized`` counts every text it was asked to tokenize.
    """

    pad_id = PAD_ID

    def __init__(
        self,
        dim: int = 32,
        vocab_size: int = 4096,
        max_seq_len: int = 64,
        seed: int = 0,
        fingerprint: str = "tiny-v1",
        word_vectors: Mapping[str, Sequence[float]] | None = None,
    ):
        super().__init__()
        if word_vectors is None:
            self.vocabulary = None
            table = torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(seed))
        else:
            self.vocabulary = {word: FIRST_WORD_ID + row for row, word in enumerate(word_vectors)}
            rows = torch.tensor(np.array(list(word_vectors.values())), dtype=torch.float32)
            table = torch.cat([torch.empty(FIRST_WORD_ID, rows.shape[1]), rows])
        table[:FIRST_WORD_ID] = 0
        self.vocab_size, self.dim = table.shape
        self.max_seq_len, self.fingerprint = max_seq_len, fingerprint
        self.embedding = torch.nn.Embedding.from_pretrained(table, freeze=False, padding_idx=PAD_ID)
        self.texts_tokenized = 0

    def prepare(self, texts: Iterable[str]) -> None:
        pass

    def tokenizer_fingerprint(self) -> str:
        words = "hashed" if self.vocabulary is None else zlib.crc32("\n".join(self.vocabulary).encode())
        return f"{self.fingerprint}-{self.vocab_size}-{words}"

    def word_id(self, word: str) -> int:
        if self.vocabulary is not None:
            return self.vocabulary[word]
        return FIRST_WORD_ID + zlib.crc32(word.encode()) % (self.vocab_size - FIRST_WORD_ID)

    def tokenize(self, texts: Sequence[str], side: str) -> list[np.ndarray]:
        self.texts_tokenized += len(texts)
        return [
            np.array(
                [START_ID, *(self.word_id(word) for word in re.findall(r"[a-z0-9]+", text.lower()))][
                    : self.max_seq_len
                ],
                dtype=np.int32,
            )
            for text in texts
        ]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: str) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(pooled, dim=-1)

    def save(self, directory: Path) -> None:
        save_model(self, str(Path(directory) / "model.safetensors"))

    def load(self, directory: Path) -> None:
        load_model(self, str(Path(directory) / "model.safetensors"))


def write_jsonl(path: Path, records: Iterable[Mapping]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


WORDS = ["sort", "parse", "read", "write", "open", "close", "join", "split"]
WORDS += ["merge", "find", "count", "load", "save", "send", "walk", "copy"]
NOUNS = ["file", "list", "text", "tree", "url", "bytes"]


def write_pairs(path: Path, pairs: int | Iterable[tuple[str, str]], seed: int = 0) -> Path:
    """Write (query, code) pairs as JSONL; ``pairs`` is the pairs, or how many to draw with ``seed``.

    Drawn pairs are distinct ("sort the file number 3" with a function that does it), their codes
    of varied length: a comment of 3 to 29 random words.
    """
    if isinstance(pairs, int):
        rng = np.random.default_rng(seed)
        drawn = []
        for i in range(pairs):
            verb, noun = rng.choice(WORDS), rng.choice(NOUNS)
            body = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 30))))
            code = f"def {verb}_{noun}_{i}(x):\n    # {body}\n    return {verb}(x, '{noun}')\n"
            drawn.append((f"{verb} the {noun} number {i}", code))
        pairs = drawn
    return write_jsonl(path, ({"query": query, "code": code} for query, code in pairs))


def tiny_config(tmp_path: Path, pair_files: tuple[Path, Path], **train):
    """A run of a one-layer transformer on (train, val) pair files in seconds; ``train`` overrides."""
    train_file, val_file = pair_files
    settings = {
        "batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": 6,
        "warmup_steps": 2,
        "eval_interval": 3,
        "save_interval": 3,
        "log_interval": 1,
        "seed": 3,
        "precision": "fp32",
        **train,
    }
    return load_config(
        data={
            "plugins": {"encoder": "transformer", "trackers": []},
            "encoder": {"vocab_size": 300, "d_model": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 48},
            "data": {
                "train_file": str(train_file),
                "val_file": str(val_file),
                "cache_dir": str(tmp_path / "cache"),
            },
            "train": settings,
            "output_dir": str(tmp_path / "run"),
        }
    )


def logged_losses(run_dir: Path) -> dict[int, float]:
    """{step: train/loss} from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def write_tiny_bert(directory: Path, texts: Sequence[str], max_positions: int = 128) -> str:
    """A randomly initialised two-layer BERT (hidden 32) with a WordPiece tokenizer trained on
    ``texts``: an hf model folder that loads in milliseconds, with nothing downloaded."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")]
    )
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    tokenizer.save(str(directory / "tokenizer.json"))
    return str(directory)


def write_distribution(root: Path, dist: str, version: str, modules: dict[str, str]) -> Path:
    """Write ``modules`` ({module_name: source}) and a dist-info registering each in ``dualenc``.

    ``root`` must then be put on sys.path (or PYTHONPATH) for discovery.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {name}" for name in modules)
    (info / "entry_points.txt").write_text(f"[dualenc]\n{lines}\n")
    return root


def build_index(corpus, output_dir, checkpoint, encoder, *, update=False, overwrite=False, **options):
    """``dualenc index build`` of ``corpus`` with ``encoder``, no progress bar; ``options`` are
    IndexOptions fields."""
    from dualenc.core.index.build import build_index as build
    from dualenc.core.index.options import IndexOptions

    return build(
        corpus,
        output_dir,
        checkpoint,
        encoder=encoder,
        update=update,
        overwrite=overwrite,
        options=IndexOptions(**options),
        progress=False,
    )
