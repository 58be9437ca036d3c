"""Weight-space interpolation of a fine-tuned encoder with the model it started from.

WiSE-FT (Wortsman et al., 2022): ``weight x fine-tuned + (1 - weight) x base``, tensor by
tensor, keeps much of what fine-tuning gained on its own distribution and gives back much of
what it lost elsewhere (measured here: CoSQA's web queries after fine-tuning on docstrings).
The result is an encoder checkpoint like any other, without trainer state (not resumable).
"""

from __future__ import annotations

import json
from pathlib import Path

from dualenc.errors import DualencError

MERGE_RECORD = "merge.json"


def interpolate_state(tuned: dict, base: dict, weight: float, where: str) -> dict:
    """``weight x tuned + (1 - weight) x base`` for every floating-point tensor; others (integer
    buffers such as position ids) are taken from ``tuned``. Keys and shapes must agree."""
    if tuned.keys() != base.keys():
        missing = sorted(tuned.keys() ^ base.keys())
        raise DualencError(f"{where}: the two models have different weights ({', '.join(missing[:5])})")
    merged = {}
    for name, tensor in tuned.items():
        other = base[name]
        if tensor.shape != other.shape:
            raise DualencError(
                f"{where}: weight {name!r} is {tuple(tensor.shape)} here and {tuple(other.shape)} in the base"
            )
        if tensor.is_floating_point():
            merged[name] = tensor.lerp(other.to(tensor.dtype), 1.0 - weight)
        else:
            merged[name] = tensor
    return merged


def merge_checkpoint(
    checkpoint: Path, out_dir: Path, weight: float = 0.5, base: Path | None = None, catalog=None
) -> Path:
    """Write ``out_dir``: the encoder of ``checkpoint`` interpolated with ``base`` (another
    checkpoint of the same plugin and shapes), by default the pretrained model the checkpoint's
    encoder was built from (its ``model_path``; encoders trained from scratch have none)."""
    from dualenc.core.checkpoint import load_encoder, read_encoder_record, resolve
    from dualenc.core.io import staged_dir
    from dualenc.export import refuse_existing
    from dualenc.registry.catalog import load_catalog

    if not 0.0 <= weight <= 1.0:
        raise DualencError(f"--weight must be between 0 and 1 (got {weight})")
    checkpoint, out_dir = resolve(Path(checkpoint)), Path(out_dir)
    refuse_existing(out_dir)
    catalog = catalog or load_catalog()
    tuned, plugin, options = load_encoder(checkpoint, catalog)
    if base is not None:
        base_encoder, base_plugin, _ = load_encoder(Path(base), catalog)
        if base_plugin != plugin:
            raise DualencError(f"{base}: a {base_plugin!r} encoder; {checkpoint} is {plugin!r}")
        base_name = str(base)
    else:
        if not hasattr(options, "model_path"):
            raise DualencError(
                f"{checkpoint}: the {plugin!r} encoder was not built from a pretrained model; "
                "give --base CHECKPOINT to merge with"
            )
        base_encoder = catalog.get("encoder", plugin).create(options)
        base_name = options.model_path or "the default pretrained model"
    merged = interpolate_state(tuned.state_dict(), base_encoder.state_dict(), weight, str(checkpoint))
    tuned.load_state_dict(merged)
    record = read_encoder_record(checkpoint)
    with staged_dir(out_dir) as staging:
        from dualenc.core.checkpoint import save_encoder

        save_encoder(tuned, plugin, options, staging)
        merge = {"checkpoint": str(checkpoint), "base": base_name, "weight": weight, "encoder": record}
        (staging / MERGE_RECORD).write_text(json.dumps(merge, indent=2) + "\n")
    return out_dir
