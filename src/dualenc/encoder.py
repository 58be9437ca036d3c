"""``dualenc.Encoder``: a trained encoder, or a Hugging Face model, that turns texts into vectors.

    encoder = dualenc.Encoder.load("checkpoints/quickstart")  # a run: its best checkpoint
    queries = encoder.encode(["read a file"], side="query")  # [1, dim] float32, unit rows
    codes = encoder.encode(["def read(p): ...", "def sort(x): ..."], side="code")
    scores = queries @ codes.T

Texts are encoded as evaluation encodes them: tokenized by the encoder plugin (its prompts and
max lengths per side included), in length-sorted batches of a token budget on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dualenc.core import checkpoint
from dualenc.core.device import resolve_device
from dualenc.core.encode import encode_token_ids, encoder_device
from dualenc.errors import ConfigError, DualencError
from dualenc.registry.kinds import SIDES

log = logging.getLogger("dualenc.encoder")

# what a Hugging Face / sentence-transformers model folder must hold for the hf encoder
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# sentence-transformers' record of the length its models truncate to
SENTENCE_BERT_CONFIG = "sentence_bert_config.json"
CONVERSIONS = ("numpy", "torch")


class Encoder:
    """An encoder plugin (``model``, a ``torch.nn.Module``) in eval mode, with what encoding
    texts needs. ``Encoder.load`` builds one from a folder; ``Encoder(model)`` wraps an encoder
    already built (``plugin`` and ``options`` then only describe it)."""

    def __init__(self, model, *, plugin: str | None = None, options: Any = None, path: Path | None = None):
        self.model = model.eval()
        self.plugin = plugin
        self.options = options
        self.path = path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        options: Mapping[str, Any] | None = None,
        plugins: Sequence[Any] = (),
    ) -> Encoder:
        """The encoder in ``path``: a dualenc checkpoint (a folder holding ``encoder.json``), a
        training run's folder (its best checkpoint, else ``last``), or a Hugging Face /
        sentence-transformers model folder (``config.json``, ``model.safetensors``,
        ``tokenizer.json``: the ``hf`` encoder, truncating where the folder's
        ``sentence_bert_config.json`` says).

        ``device``: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda:1"``, ...
        ``options``: encoder options to change, ``{"normalize": False}`` for the ``hf``
        encoder's raw vectors; a checkpoint takes only those its plugin may change on load.
        ``plugins``: plugin objects that provide the checkpoint's encoder, besides the installed
        ones (as ``dualenc.train``'s)."""
        from dualenc.registry.catalog import load_catalog

        path, target = Path(path), resolve_device(device)  # a bad device before any loading
        catalog = load_catalog(plugins=plugins)
        directory = _checkpoint_folder(path)
        if directory is not None:
            record = checkpoint.read_encoder_record(directory)
            component = catalog.get("encoder", record["plugin"])
            wanted = None
            if options:
                wanted = _options(component, {**(record.get("options") or {}), **options})
            model, plugin, resolved = checkpoint.load_encoder(directory, catalog, options=wanted)
        else:
            _check_hf_folder(path)
            component = catalog.get("encoder", "hf")
            resolved = _options(
                component, {"model_path": str(path), **_folder_max_len(path), **(options or {})}
            )
            model, plugin, directory = component.create(resolved), "hf", path
        model.to(target)
        return cls(model, plugin=plugin, options=resolved, path=directory)

    @property
    def dim(self) -> int:
        return self.model.dim

    @property
    def prompts(self) -> dict[str, str]:
        """The text put before each text of a side (``{"query": "query: ", "code": ""}``)."""
        return dict(getattr(self.model, "prompts", {side: "" for side in SIDES}))

    @property
    def max_lengths(self) -> dict[str, int]:
        """The tokens each side's texts are truncated to."""
        return dict(getattr(self.model, "max_lengths", {side: self.model.max_seq_len for side in SIDES}))

    @property
    def device(self):
        return encoder_device(self.model)

    @property
    def gives_raw_vectors(self) -> bool:
        """True when the plugin returns vectors as pooled (its ``normalize`` option is off),
        which ``encode(normalize=False)`` needs; every other plugin returns unit vectors."""
        return self.options is not None and getattr(self.options, "normalize", True) is False

    def encode(
        self,
        texts: str | Sequence[str],
        side: str = "query",
        batch_size: int = 128,
        normalize: bool = True,
        show_progress_bar: bool = False,
        convert_to: str = "numpy",
    ):
        """Vectors of ``texts`` as ``side`` (``"query"`` or ``"code"``): ``[N, dim]`` float32 in
        input order, a numpy array or (``convert_to="torch"``) a CPU tensor; a single string
        gives one ``[dim]`` vector.

        ``normalize``: unit vectors (the inner product is the cosine). ``False`` gives the raw
        vectors only of an encoder loaded with its ``normalize`` option off
        (``Encoder.load(path, options={"normalize": False})``); an encoder that returns unit
        vectors only is refused rather than pretended raw."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        for position, text in enumerate(texts):
            if not isinstance(text, str):
                raise DualencError(f"texts[{position}]: expected a string, got {type(text).__name__}")
        if side not in SIDES:
            raise DualencError(f"side must be one of {', '.join(SIDES)} (got {side!r})")
        if convert_to not in CONVERSIONS:
            raise DualencError(f"convert_to must be one of {', '.join(CONVERSIONS)} (got {convert_to!r})")
        if batch_size < 1:
            raise DualencError(f"batch_size must be >= 1 (got {batch_size})")
        if not normalize and not self.gives_raw_vectors:
            raise DualencError(
                f"the {self.plugin or 'given'} encoder returns unit vectors only; for raw ones load it "
                "with options={'normalize': False}, if its plugin has that option (hf does)"
            )
        vectors = self._encode(texts, side, batch_size, show_progress_bar)
        if normalize and self.gives_raw_vectors:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        result = vectors[0] if single else vectors
        if convert_to == "torch":
            import torch

            return torch.from_numpy(result)
        return result

    def _encode(self, texts: list[str], side: str, batch_size: int, show_progress_bar: bool) -> np.ndarray:
        token_ids = self.model.tokenize(texts, side)
        if not show_progress_bar:
            return encode_token_ids(self.model, token_ids, side, batch_size)
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), desc=f"encoding {side}", unit=" texts") as bar:
            return encode_token_ids(self.model, token_ids, side, batch_size, progress=bar.update)

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"Encoder(plugin={self.plugin!r}, dim={self.dim}{where})"


def _checkpoint_folder(path: Path) -> Path | None:
    """The dualenc checkpoint ``path`` names (itself, or a run's best, else last), or None."""
    resolved = checkpoint.resolve(path)
    if (resolved / checkpoint.ENCODER_CONFIG).is_file():
        return resolved
    if not resolved.is_dir():
        raise DualencError(f"{path}: no such folder")
    best = checkpoint.best_checkpoints(path)
    if len(best) > 1:
        raise DualencError(
            f"{path}: holds several best checkpoints ({', '.join(p.name for p in best)}); load one of them"
        )
    if best:
        return best[0]
    last = checkpoint.resolve(path / checkpoint.LAST_NAME)
    return last if (last / checkpoint.ENCODER_CONFIG).is_file() else None


def _check_hf_folder(path: Path) -> None:
    missing = [name for name in HF_FILES if not (path / name).is_file()]
    if missing:
        raise DualencError(
            f"{path}: neither a dualenc checkpoint ({checkpoint.ENCODER_CONFIG}), a training run "
            f"({checkpoint.LAST_NAME}/ or {checkpoint.best_name('*')}/), nor a Hugging Face model "
            f"folder (missing {', '.join(missing)})"
        )


def _folder_max_len(path: Path) -> dict[str, int]:
    """``max_seq_len`` from a sentence-transformers folder, which its models truncate to."""
    config_path = path / SENTENCE_BERT_CONFIG
    if not config_path.is_file():
        return {}
    try:
        length = json.loads(config_path.read_text(encoding="utf-8")).get("max_seq_length")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise DualencError(f"{config_path}: not a JSON object ({exc})") from None
    return {"max_seq_len": length} if isinstance(length, int) and not isinstance(length, bool) else {}


def _options(component, data: Mapping[str, Any]):
    """``data`` structured into the plugin's options class, with key-path errors."""
    from dualenc.core.configio import Problems, structure

    if component.options is None:
        if data:
            raise DualencError(f"Encoder.load: the {component.name} encoder takes no options")
        return None
    problems = Problems("Encoder.load options", {}, {})
    options = structure(dict(data), component.options, (), problems)
    if problems.items:
        raise ConfigError(problems.items)
    return options
