"""The training loop, top to bottom.

    dualenc train --config configs/baseline.yaml
    dualenc train --config configs/with_hard_negatives.yaml \
        --resume-from checkpoints/encoder/encoder-best-mrr

It knows components only through their protocols (dualenc.registry.kinds): which encoder,
loss, miner, evaluator and trackers run is the config's business.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import attrs
import numpy as np
import torch

from dualenc.core import checkpoint, data, distributed
from dualenc.core.build import build
from dualenc.core.config import RunConfig
from dualenc.core.configio import dump_yaml, unstructure
from dualenc.errors import DualencError
from dualenc.registry.catalog import Catalog, load_catalog
from dualenc.registry.kinds import ContrastiveBatch

log = logging.getLogger("dualenc.train")


class TrainingDiverged(DualencError):
    pass


@attrs.frozen
class TrainResult:
    step: int
    status: str  # "finished" | "interrupted" | "stopped"
    best_metric: float | None
    last_checkpoint: Path


# --- small helpers, each used once below ----------------------------------------------


def pick_precision(name: str, device: torch.device) -> str:
    """ "auto": bf16 on GPUs that support it. On CPUs fp32: measured here, bf16 autocast ran
    slower than fp32 on an AVX512-BF16 CPU without AMX, and no default may depend on AMX."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def make_scheduler(optimizer, train_config):
    warmup, total, kind = train_config.warmup_steps, train_config.max_steps, train_config.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(encoder, loss_fn, train_config):
    # no weight decay on biases, norms and the temperature
    decay, no_decay = [], []
    for name, param in encoder.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    if isinstance(loss_fn, torch.nn.Module):
        no_decay += [p for p in loss_fn.parameters() if p.requires_grad]
    groups = [
        {"params": decay, "weight_decay": train_config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused: one pass over each tensor instead of one per arithmetic op (CPU and CUDA alike)
    return torch.optim.AdamW(groups, lr=train_config.learning_rate, fused=True)


def config_changes(old_yaml: str, new_yaml: str) -> list[str]:
    import yaml

    def flat(node, prefix=""):
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                out.update(flat(value, f"{prefix}{key}."))
            return out
        return {prefix[:-1]: node}

    old, new = flat(yaml.safe_load(old_yaml)), flat(yaml.safe_load(new_yaml))
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith("output_dir")
    ]


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop saves a resumable checkpoint and exits cleanly."""

    def __init__(self):
        self.signal_name: str | None = None

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def encode_side(encoder, pairs, ids, side, device):
    """Embeddings of one side of ``ids``, in their order, encoded in ``data.length_groups``:
    the queries that come with a bucket of like-length codes vary in length, and each group
    padded to its own longest computes far fewer padding tokens than one batch."""
    groups = data.length_groups(pairs.token_ids(side).lengths[ids])
    if len(groups) == 1:
        return encoder(*pairs.collate(ids, side, device), side)
    parts = [encoder(*pairs.collate(ids[group], side, device), side) for group in groups]
    return in_original_order(parts, np.concatenate(groups), device)


def in_original_order(parts, order: np.ndarray, device) -> torch.Tensor:
    """Concatenated ``parts``, whose rows are items ``order[0], order[1], ...``, put back in item order."""
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return torch.cat(parts)[torch.from_numpy(inverse).to(device)]


def encode_contrastive_batch(encoder, pairs, pair_ids, negative_ids, device, autocast, gather):
    """Encode one step's queries, positives and mined negatives into a ContrastiveBatch."""
    candidate_ids = np.concatenate([pair_ids, negative_ids[negative_ids >= 0]])
    with autocast():
        query = encode_side(encoder, pairs, pair_ids, "query", device)
        parts = [encode_side(encoder, pairs, pair_ids, "code", device)]
        if len(candidate_ids) > len(pair_ids):  # negatives grouped by their own lengths
            parts.append(encode_side(encoder, pairs, candidate_ids[len(pair_ids) :], "code", device))
    return _contrastive(query, torch.cat(parts), pairs, candidate_ids, device, gather)


def _contrastive(query, candidates, pairs, candidate_ids, device, gather: bool) -> ContrastiveBatch:
    """Assemble the batch; with ``gather``, over every rank's queries and candidates.

    Gathered layout: all ranks' positives in rank order, then all ranks' mined negatives,
    so the positive of global query j is candidate j.
    """
    code_key = torch.from_numpy(pairs.code_key[candidate_ids]).to(device)
    query_key = torch.from_numpy(pairs.query_key[candidate_ids]).to(device)
    n = len(query)
    if gather:
        query = distributed.gather_with_grad(query)
        candidates = torch.cat(
            [distributed.gather_with_grad(candidates[:n]), distributed.gather_with_grad(candidates[n:])]
        )
        code_key = torch.cat(
            [distributed.gather_with_grad(code_key[:n]), distributed.gather_with_grad(code_key[n:])]
        )
        query_key = torch.cat(
            [distributed.gather_with_grad(query_key[:n]), distributed.gather_with_grad(query_key[n:])]
        )
    return ContrastiveBatch(
        query=query,
        candidates=candidates,
        positive=torch.arange(len(query), device=device),
        candidate_code_key=code_key,
        candidate_query_key=query_key,
    )


def grad_cache_step(encoder, loss_fn, pairs, pair_ids, negative_ids, device, autocast, chunk, gather):
    """GradCache: the loss over the whole batch with the activation memory of one chunk.

    1. encode every chunk without grad; 2. loss and its gradient w.r.t. the embeddings;
    3. re-encode each chunk with grad (same RNG state, so the same dropout) and
    backpropagate the cached embedding gradients.
    """
    candidate_ids = np.concatenate([pair_ids, negative_ids[negative_ids >= 0]])
    # chunks cut from each side sorted by length: each chunk is padded to its own longest
    orders = {
        "query": np.argsort(pairs.query_ids.lengths[pair_ids], kind="stable"),
        "code": np.argsort(pairs.code_ids.lengths[candidate_ids], kind="stable"),
    }
    sides = [("query", pair_ids[orders["query"]]), ("code", candidate_ids[orders["code"]])]
    chunks = [(side, ids[i : i + chunk]) for side, ids in sides for i in range(0, len(ids), chunk)]
    rng_states, embeddings = [], []
    with torch.no_grad():
        for side, ids in chunks:
            rng_states.append(torch.get_rng_state())
            with autocast():
                embeddings.append(encoder(*pairs.collate(ids, side, device), side).float())
    cached = [e.detach().requires_grad_() for e in embeddings]
    n_query_chunks = math.ceil(len(pair_ids) / chunk)

    batch = _contrastive(
        in_original_order(cached[:n_query_chunks], orders["query"], device),
        in_original_order(cached[n_query_chunks:], orders["code"], device),
        pairs,
        candidate_ids,
        device,
        gather,
    )
    loss = loss_fn(batch)
    loss.backward()
    resume_state = torch.get_rng_state()
    for (side, ids), state, emb in zip(chunks, rng_states, cached, strict=True):
        torch.set_rng_state(state)
        with autocast():
            again = encoder(*pairs.collate(ids, side, device), side).float()
        again.backward(emb.grad)
    torch.set_rng_state(resume_state)
    return loss.detach()


# --- the loop ---------------------------------------------------------------------------


def train(
    config: RunConfig,
    *,
    resume_from: Path | None = None,
    stop_after: int | None = None,
    catalog: Catalog | None = None,
) -> TrainResult:
    catalog = catalog or load_catalog()
    tc = config.train
    run_dir = Path(config.output_dir)
    if resume_from is None and (run_dir / checkpoint.LAST_NAME).exists():
        raise DualencError(
            f"{run_dir} already holds a run; resume it with --resume-from {run_dir / checkpoint.LAST_NAME}, "
            "or choose another output_dir (--set output_dir=...)"
        )
    device = distributed.setup(tc.device, tc.dist_timeout_s)
    world, main = distributed.world_size(), distributed.is_main()
    gather = world > 1 and tc.gather_across_ranks
    precision = pick_precision(tc.precision, device)
    config_yaml = dump_yaml(config)
    torch.manual_seed(tc.seed)
    try:
        return _train(
            config,
            catalog,
            resume_from,
            stop_after,
            run_dir,
            device,
            world,
            main,
            gather,
            precision,
            config_yaml,
        )
    finally:
        distributed.teardown()


def _train(
    config, catalog, resume_from, stop_after, run_dir, device, world, main, gather, precision, config_yaml
) -> TrainResult:
    tc = config.train

    # 1. components; a checkpoint supplies the encoder (architecture, weights, tokenizer)
    exact = False
    encoder = None
    if resume_from is not None:
        resume_from = checkpoint.resolve(Path(resume_from))
        encoder, plugin, _ = checkpoint.load_encoder(resume_from, catalog)
        if plugin != config.plugins.encoder:
            raise DualencError(
                f"{resume_from}: checkpoint holds a {plugin!r} encoder but the config selects "
                f"{config.plugins.encoder!r}"
            )
        saved_yaml = (resume_from / checkpoint.RUN_CONFIG).read_text()
        changes = config_changes(saved_yaml, config_yaml)
        exact = not changes and (resume_from / checkpoint.TRAINER_JSON).is_file()
        if exact:
            log.info("resuming exactly from %s", resume_from)
        else:
            log.info(
                "starting from the weights of %s; new optimizer and schedule. Config changes:\n  %s",
                resume_from,
                "\n  ".join(changes) or "(none)",
            )
    parts = build(config, catalog, encoder=encoder)
    encoder, loss_fn, miner, evaluator = parts.encoder, parts.loss, parts.miner, parts.evaluator
    if resume_from is None:
        texts = data.read_training_texts(config.data.train_file, config.data)
        encoder.prepare(texts)
    encoder.to(device)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn.to(device)
    n_params = sum(p.numel() for p in encoder.parameters())
    log.info("encoder %s: %.1fM parameters, dim %d", config.plugins.encoder, n_params / 1e6, encoder.dim)

    # 2. data: token ids cached on disk; batches length-bucketed and deduplicated
    pairs = data.load_pair_set(config.data.train_file, config.data, encoder)
    val_set = data.load_eval_set(config.data.val_file, config.data)
    sampler = data.BucketBatchSampler(
        pairs,
        batch_size=tc.batch_size,
        seed=tc.seed,
        window=config.data.bucket_window,
        num_replicas=world,
        rank=distributed.rank(),
    )

    # 3. optimiser and schedule
    optimizer = make_optimizer(encoder, loss_fn, tc)
    scheduler = make_scheduler(optimizer, tc)
    step, best = 0, None
    if exact:
        state = checkpoint.load_trainer_state(
            resume_from, loss_fn if isinstance(loss_fn, torch.nn.Module) else None
        )
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        sampler.load_state_dict(state.sampler)
        miner.load_state_dict(state.miner)
        torch.set_rng_state(state.torch_rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        step, best = state.step, state.best_metric

    def autocast():
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def save(periodic: bool, is_best: bool) -> None:
        if not main:
            return
        state = checkpoint.TrainerState(
            step=step,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            sampler=sampler.state_dict(),
            miner=miner.state_dict(),
            best_metric=best,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        )
        checkpoint.save_checkpoint(
            run_dir,
            encoder=encoder,
            plugin=config.plugins.encoder,
            options=config.encoder,
            loss_module=loss_fn if isinstance(loss_fn, torch.nn.Module) else None,
            state=state,
            config_yaml=config_yaml,
            periodic=periodic,
            best=is_best,
            keep_last=tc.keep_last,
        )

    primary = f"val/{evaluator.primary_metric}"
    trackers = parts.trackers if main else []  # only rank 0 writes

    def evaluate() -> bool:
        """Evaluate (every rank encodes a share), log, and say whether this is the best so far."""
        nonlocal best
        metrics = evaluator.evaluate(encoder, val_set, prefix="val")
        for tracker in trackers:
            tracker.log(metrics, step)
        improved = best is None or metrics[primary] > best
        if improved:
            best = metrics[primary]
        return improved

    # 4. the loop
    for tracker in trackers:
        tracker.start(run_dir, unstructure(config))
    if main:
        global_batch = tc.batch_size * world
        log.info(
            "%d process(es) x batch %d = effective batch %d; each query sees %d in-batch negatives "
            "+ up to %d mined candidates; precision %s on %s",
            world,
            tc.batch_size,
            global_batch,
            (global_batch if gather else tc.batch_size) - 1,
            miner.num_negatives * (global_batch if gather else tc.batch_size),
            precision,
            device,
        )
    status = "finished"
    last = run_dir / checkpoint.LAST_NAME
    batches = iter(sampler)
    previous_round_start = None
    window_loss, window_steps, window_pairs, window_start = 0.0, 0, 0, time.perf_counter()
    try:
        with StopRequested() as stop:
            if step == 0 and tc.eval_at_start:
                evaluate()
            encoder.train()
            while step < tc.max_steps:
                if miner.due(step):
                    mine_start = time.perf_counter()
                    mined = miner.mine(encoder, pairs, step, run_dir)
                    encoder.train()
                    if previous_round_start is not None:
                        # the steady cost of the refresh interval: this round's share of the time
                        # since the previous round began (the first round has no interval yet)
                        now = time.perf_counter()
                        since = max(now - previous_round_start, 1e-9)
                        mined["mining/overhead_pct"] = 100 * (now - mine_start) / since
                    previous_round_start = mine_start
                    for tracker in trackers:
                        tracker.log(mined, step)
                    window_start += time.perf_counter() - mine_start

                pair_ids = next(batches)
                negative_ids = miner.negatives(pair_ids)
                if tc.grad_cache_chunk:
                    loss = grad_cache_step(
                        encoder,
                        loss_fn,
                        pairs,
                        pair_ids,
                        negative_ids,
                        device,
                        autocast,
                        tc.grad_cache_chunk,
                        gather,
                    )
                else:
                    batch = encode_contrastive_batch(
                        encoder, pairs, pair_ids, negative_ids, device, autocast, gather
                    )
                    loss = loss_fn(batch)
                    loss.backward()
                params = [p for g in optimizer.param_groups for p in g["params"]]
                # gathered: every rank holds the global loss, and its gradient is the sum over
                # ranks of what flowed into each rank's own embeddings; otherwise average
                distributed.sum_gradients(params, average=not gather)
                loss_value = float(loss.detach())
                if not gather:
                    loss_value = distributed.mean_over_ranks(loss_value, device)
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss is {loss_value} at step {step + 1}; stopped without saving. "
                        f"The last good checkpoint is {last}"
                        + ("" if last.exists() else " (none was written yet)")
                    )
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1

                window_loss += loss_value
                window_steps += 1
                window_pairs += len(pair_ids) * world
                if step % tc.log_interval == 0 or step == tc.max_steps:
                    elapsed = time.perf_counter() - window_start
                    metrics = {
                        "train/loss": window_loss / window_steps,
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/pairs_per_sec": window_pairs / max(elapsed, 1e-9),
                        "train/padding_fraction": sampler.padding_fraction(),
                    }
                    if hasattr(loss_fn, "temperature"):
                        metrics["train/temperature"] = float(loss_fn.temperature)
                    for tracker in trackers:
                        tracker.log(metrics, step)
                    window_loss, window_steps, window_pairs = 0.0, 0, 0
                    window_start = time.perf_counter()

                is_best = False
                if step % tc.eval_interval == 0 or step == tc.max_steps:
                    eval_start = time.perf_counter()
                    is_best = evaluate()
                    encoder.train()
                    window_start += time.perf_counter() - eval_start
                stopping = distributed.any_rank(stop.signal_name is not None, device) or step == stop_after
                if is_best or stopping or step % tc.save_interval == 0 or step == tc.max_steps:
                    save_start = time.perf_counter()
                    save(periodic=step % tc.save_interval == 0, is_best=is_best)
                    window_start += time.perf_counter() - save_start
                if stopping:
                    status = "interrupted" if stop.signal_name else "stopped"
                    log.info(
                        "stopped at step %d (%s); resume with --resume-from %s",
                        step,
                        stop.signal_name or "stop_after",
                        last,
                    )
                    break
    except BaseException:
        for tracker in trackers:
            tracker.finish("failed")
        raise
    for tracker in trackers:
        tracker.finish(status)
    distributed.barrier()
    return TrainResult(step=step, status=status, best_metric=best, last_checkpoint=last)
