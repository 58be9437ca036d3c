"""One training step under torchrun (or alone), written out for test_distributed.py.

Usage: torchrun --nproc_per_node 2 tests/dist_step.py CONFIG OUT   (or python ... CONFIG OUT)
Every process takes its contiguous share of the same 16 pairs and the same mined negatives;
rank 0 writes the loss and the updated weights.
"""

import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dualenc.core import distributed
from dualenc.core.configio import load_config
from dualenc.core.data.pairset import load_pair_set
from dualenc.core.data.records import read_training_texts
from dualenc.core.optim import make_optimizer
from dualenc.core.step import encode_contrastive_batch
from dualenc.registry import load_catalog

config = load_config(sys.argv[1])
out = Path(sys.argv[2])
device = distributed.setup("cpu", 60)
world, rank = distributed.world_size(), distributed.rank()
catalog = load_catalog()
torch.manual_seed(0)
encoder = catalog.get("encoder", "transformer").create(config.encoder)
encoder.prepare(read_training_texts(config.data.train_file, config.data))
pairs = load_pair_set(config.data.train_file, config.data, encoder)
loss_fn = catalog.get("loss", "infonce").create(config.loss)
optimizer = make_optimizer(encoder, loss_fn, config.train)

ids = np.arange(16)
# two mined negatives per query; one is a clone-free far pair, one slot empty for some rows
negatives = np.stack([(ids + 40) % len(pairs), np.where(ids % 3 == 0, -1, (ids + 60) % len(pairs))], axis=1)
share = len(ids) // world
mine = slice(rank * share, (rank + 1) * share)
batch = encode_contrastive_batch(encoder, pairs, ids[mine], negatives[mine], device, nullcontext, world > 1)
loss = loss_fn(batch)
loss.backward()
distributed.sum_gradients([p for g in optimizer.param_groups for p in g["params"]])
optimizer.step()
if distributed.is_main():
    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous() for name, p in encoder.named_parameters()}
    tensors["loss"] = loss.detach().reshape(1)
    tensors["positive"] = batch.positive
    tensors["candidate_code_key"] = batch.candidate_code_key
    save_file(tensors, str(out / "step.safetensors"))
distributed.teardown()
