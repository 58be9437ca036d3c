"""The training loop, top to bottom.

    dualenc train --config configs/baseline.yaml
    dualenc train --config configs/with_hard_negatives.yaml \
        --resume-from checkpoints/encoder/encoder-best-mrr

It knows components only through their protocols (dualenc.registry.kinds): which encoder,
loss, miner, evaluator and trackers run is the config's business. One optimisation step is
``core.step``; saving and resuming is ``core.checkpoint``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path

import attrs
import torch

from dualenc.core import checkpoint, distributed
from dualenc.core.best import BestMetric
from dualenc.core.build import build
from dualenc.core.compile import CompiledEncoder
from dualenc.core.config import RunConfig
from dualenc.core.configio import check_input_files, dump_yaml, unstructure
from dualenc.core.data.evalsets import load_val_sets
from dualenc.core.data.pairset import load_pair_set
from dualenc.core.data.records import read_training_texts
from dualenc.core.data.sampler import BucketBatchSampler
from dualenc.core.device import pick_precision
from dualenc.core.optim import make_optimizer, make_scheduler
from dualenc.core.step import TrainStep, sparse_embedding_gradients
from dualenc.errors import DualencError
from dualenc.registry.catalog import Catalog, load_catalog
from dualenc.registry.kinds import EvalSet

log = logging.getLogger("dualenc.train")


class TrainingDiverged(DualencError):
    pass


@attrs.frozen
class TrainResult:
    """What ``dualenc.train`` returns: where the run ended and what it left in ``run_dir``."""

    step: int
    status: str  # "finished" | "interrupted" | "stopped" | "early_stopped" | "time_limit"
    best_metric: float | None
    best_metric_name: str  # the metric that picks the best checkpoint: "val/mrr"
    best_checkpoint: Path | None  # None when no evaluation ran
    last_checkpoint: Path
    run_dir: Path


# --- small helpers, each used once below ----------------------------------------------

# the clock of train.max_train_seconds (a module attribute: tests replace it)
clock = time.perf_counter


class TrainClock:
    """Wall time of the training loop, summed over a run and the runs that resume it.

    It counts from the loop's start: evaluations, mining rounds and saves inside the loop
    count, building the model and loading (tokenizing) the data before it do not. A
    checkpoint saves ``seconds()``; an exact resume restores it into ``spent``."""

    def __init__(self):
        self.spent, self.started = 0.0, None

    def start(self) -> None:
        self.started = clock()

    def seconds(self) -> float:
        return self.spent + (clock() - self.started if self.started is not None else 0.0)


class StopRequested:
    """SIGINT/SIGTERM set a flag; the loop saves a resumable checkpoint and exits cleanly.

    Python lets only the main thread install handlers: run from another thread (a notebook
    kernel's, a web server's) training installs none and a signal acts as it would anyway.
    The previous handlers come back on every exit, an exception's included."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)


class Trackers:
    """Every tracker of the run behind one call each; a run that raises finishes as failed."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def start(self, run_dir: Path, config: dict) -> Trackers:
        for tracker in self.trackers:
            tracker.start(run_dir, config)
        return self

    def rewind(self, step: int) -> None:
        """Logging goes on from ``step``: trackers that keep rows (``rewind`` is optional) drop
        those of ``step`` and later, which a run killed after its last checkpoint wrote."""
        for tracker in self.trackers:
            if hasattr(tracker, "rewind"):
                tracker.rewind(step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step)

    def finish(self, status: str) -> None:
        for tracker in self.trackers:
            tracker.finish(status)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.finish("failed")


class LogWindow:
    """Loss and pairs/s over the steps since the last log line. Time spent in functions
    wrapped by ``untimed`` (evaluation, mining, saving) does not count as training time."""

    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.loss, self.steps, self.pairs = 0.0, 0, 0
        self.started, self.paused_seconds = time.perf_counter(), 0.0

    def add(self, loss: float, pairs: int) -> None:
        self.loss += loss
        self.steps += 1
        self.pairs += pairs

    def untimed(self, function):
        """``function``, with the time it takes left out of the window."""

        @functools.wraps(function)
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.paused_seconds += time.perf_counter() - start

        return call

    def measure(self) -> tuple[float, float]:
        """The window's mean loss and pairs/s; a new window starts."""
        elapsed = time.perf_counter() - self.started - self.paused_seconds
        loss, pairs_per_sec = self.loss / self.steps, self.pairs / max(elapsed, 1e-9)
        self._reset()
        return loss, pairs_per_sec


class NegativeRefresh:
    """Runs the miner's rounds and logs them, with each round's share of the time since the
    previous round began (``mining/overhead_pct``: the steady cost of the refresh interval)."""

    def __init__(self, miner, pairs, run_dir: Path, trackers: Trackers):
        self.miner, self.pairs, self.run_dir, self.trackers = miner, pairs, run_dir, trackers
        self.previous_start: float | None = None

    def __call__(self, encoder, step: int) -> None:
        start = time.perf_counter()
        metrics = self.miner.mine(encoder, self.pairs, step, self.run_dir)
        encoder.train()
        if self.previous_start is not None:  # the first round has no interval yet
            now = time.perf_counter()
            metrics["mining/overhead_pct"] = 100 * (now - start) / max(now - self.previous_start, 1e-9)
        self.previous_start = start
        self.trackers.log(metrics, step)


def train_metrics(window: LogWindow, scheduler, sampler, loss_fn) -> dict[str, float]:
    loss, pairs_per_sec = window.measure()
    metrics = {
        "train/loss": loss,
        "train/lr": scheduler.get_last_lr()[0],
        "train/pairs_per_sec": pairs_per_sec,
        "train/padding_fraction": sampler.padding_fraction(),
    }
    if hasattr(loss_fn, "temperature"):
        metrics["train/temperature"] = float(loss_fn.temperature)
    return metrics


def evaluate(evaluator, encoder, val_sets: dict[str, EvalSet], trackers: Trackers, step: int) -> dict:
    """Evaluate each set under its prefix (every rank encodes a share), log them in one row,
    and return the metrics."""
    metrics = {}
    for prefix, val_set in val_sets.items():
        metrics.update(evaluator.evaluate(encoder, val_set, prefix=prefix))
    trackers.log(metrics, step)
    encoder.train()
    return metrics


def time_up(limit: float | None, train_clock: TrainClock, device) -> bool:
    """Whether ``train.max_train_seconds`` is spent; every rank agrees (the first to see it)."""
    return limit is not None and distributed.any_rank(train_clock.seconds() >= limit, device)


def time_limit_reason(tc, train_clock: TrainClock) -> str:
    return (
        f"train.max_train_seconds: {train_clock.seconds():.0f} s of training reached the limit of "
        f"{tc.max_train_seconds:g} s; the schedule was set for {tc.max_steps} steps"
    )


def stop_status(signal_name: str | None, best: BestMetric, last: Path) -> tuple[str, str]:
    """The status of a run that stops before max_steps, and why, for the log."""
    if signal_name:
        return "interrupted", f"{signal_name}; resume with --resume-from {last}"
    if best.patience_spent:
        return "early_stopped", f"early stopping: {best.name} did not improve in {best.stale} evaluations"
    return "stopped", f"stop_after; resume with --resume-from {last}"


def refuse_existing_run(run_dir: Path, resume_from: Path | None) -> None:
    if resume_from is None and (run_dir / checkpoint.LAST_NAME).exists():
        raise DualencError(
            f"{run_dir} already holds a run; resume it with --resume-from {run_dir / checkpoint.LAST_NAME}, "
            "or choose another output_dir (--set output_dir=...)"
        )


def refuse_uncreatable(run_dir: Path) -> None:
    """Refuse, before any work, an output folder that cannot be created (none is created yet:
    a run that fails to start leaves no empty folder)."""
    existing = run_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DualencError(f"{run_dir}: cannot create the output folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DualencError(f"{run_dir}: cannot create the output folder ({existing} is not writable)")


def describe(
    config: RunConfig, world: int, gather: bool, negatives: int, precision: tuple[str, str], device
) -> str:
    batch, global_batch = config.train.batch_size, config.train.batch_size * world
    seen = global_batch if gather else batch
    return (
        f"{world} process(es) x batch {batch} = effective batch {global_batch}; each query sees "
        f"{seen - 1} in-batch negatives + up to {negatives * seen} mined candidates; "
        f"precision {precision[0]} ({precision[1]}) on {device}"
        + ("; encoder compiled (train.compile)" if config.train.compile else "")
    )


def agreed_precision(chosen: tuple[str, str], device) -> tuple[str, str]:
    """``chosen``, unless another rank did not choose bf16: a probe's timings differ between
    processes, and every rank must train alike."""
    if distributed.any_rank(chosen[0] != "bf16", device) and chosen[0] == "bf16":
        return "fp32", "auto: another rank's probe did not choose bf16"
    return chosen


# --- the loop ---------------------------------------------------------------------------


def train(
    config: RunConfig,
    *,
    resume_from: Path | None = None,
    stop_after: int | None = None,
    catalog: Catalog | None = None,
) -> TrainResult:
    """Train until ``train.max_steps``, ``train.max_train_seconds``, a signal (saved,
    resumable) or ``stop_after`` steps."""
    refuse_existing_run(Path(config.output_dir), resume_from)
    check_input_files(config)
    refuse_uncreatable(Path(config.output_dir))
    with distributed.session(config.train.device, config.train.dist_timeout_s) as device:
        return _train(config, catalog or load_catalog(), device, resume_from, stop_after)


def _train(config: RunConfig, catalog: Catalog, device, resume_from, stop_after) -> TrainResult:
    tc, run_dir = config.train, Path(config.output_dir)
    last = run_dir / checkpoint.LAST_NAME
    world, main = distributed.world_size(), distributed.is_main()
    gather = world > 1 and tc.gather_across_ranks
    config_yaml = dump_yaml(config)
    torch.manual_seed(tc.seed)

    # 1. components; a checkpoint supplies the encoder (architecture, weights, tokenizer)
    parts = build(config, catalog, checkpoint_dir=resume_from)
    encoder, loss_fn, miner, evaluator = parts.encoder, parts.loss, parts.miner, parts.evaluator
    if resume_from is None:
        encoder.prepare(read_training_texts(config.data.training_files(), config.data))
    encoder.to(device)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn.to(device)
    precision = agreed_precision(pick_precision(tc.precision, device, encoder.dim), device)
    n_params = sum(p.numel() for p in encoder.parameters())
    log.info("encoder %s: %.1fM parameters, dim %d", config.plugins.encoder, n_params / 1e6, encoder.dim)

    # 2. data: token ids cached on disk; batches length-bucketed and deduplicated
    pairs = load_pair_set(config.data.training_files(), config.data, encoder)
    val_sets = load_val_sets(config.data)  # by metric prefix: "val", or "val/<name>" each
    sampler = BucketBatchSampler(
        pairs,
        batch_size=tc.batch_size,
        seed=tc.seed,
        window=config.data.bucket_window,
        num_replicas=world,
        rank=distributed.rank(),
    )

    # 3. optimiser and schedule, and the step to start from
    optimizer = make_optimizer(encoder, loss_fn, tc)
    scheduler = make_scheduler(optimizer, tc)
    sparse_embedding_gradients(encoder)
    # checkpoints, evaluation and mining use the encoder itself; only the step runs compiled
    step_encoder = CompiledEncoder(encoder) if tc.compile else encoder
    train_step = TrainStep(
        step_encoder, loss_fn, optimizer, scheduler, pairs, device, precision[0], tc, gather
    )
    train_clock = TrainClock()
    saver = checkpoint.Checkpointer(config, config_yaml, parts, optimizer, scheduler, sampler, train_clock)
    best = BestMetric.from_config(tc, default_name=f"{next(iter(val_sets))}/{evaluator.primary_metric}")
    step = saver.resume(resume_from, best) if resume_from is not None else 0
    if main:
        checkpoint.remove_leftovers(run_dir)

    # 4. the loop: only rank 0 logs and saves; time spent off training is not counted in pairs/s
    trackers = Trackers(parts.trackers if main else []).start(run_dir, unstructure(config))
    if resume_from is None:
        trackers.rewind(0)  # rows of an earlier attempt killed before its first save
    elif step:
        trackers.rewind(step + 1)  # an exact resume: later rows came from the run it replaces
    if main:
        log.info(describe(config, world, gather, miner.num_negatives, precision, device))
    window, batches = LogWindow(), iter(sampler)
    status = "early_stopped" if best.patience_spent else "finished"  # resuming one: no steps
    refresh = window.untimed(NegativeRefresh(miner, pairs, run_dir, trackers))
    score = window.untimed(functools.partial(evaluate, evaluator, encoder, val_sets, trackers))
    save = window.untimed(saver.save)
    with trackers, StopRequested() as stop:
        train_clock.start()
        # a resume whose budget is spent trains no step (a new run takes at least one)
        if (
            step
            and step < tc.max_steps
            and status == "finished"
            and time_up(tc.max_train_seconds, train_clock, device)
        ):
            status = "time_limit"
            log.info("stopped at step %d (%s)", step, time_limit_reason(tc, train_clock))
        if step == 0 and tc.eval_at_start:
            best.update(score(step))  # nothing to beat yet: an exact resume starts after step 0
            if main:  # the start may stay the best: a later eval that scores lower saves no best
                save(step, best, periodic=False, is_best=True, last=False)
        if step == 0 and miner.due(step):
            refresh(encoder, step)
        encoder.train()
        while step < tc.max_steps and not best.patience_spent and status != "time_limit":
            pair_ids = next(batches)
            loss = train_step.backward(pair_ids, miner.negatives(pair_ids))
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"loss is {loss} at step {step + 1}; stopped without saving. "
                    f"The last good checkpoint is {last}"
                    + ("" if last.exists() else " (none was written yet)")
                )
            train_step.update()
            step += 1
            window.add(loss, len(pair_ids) * world)
            # out of time: this step ends the run as max_steps would (logged, evaluated, saved)
            out_of_time = step < tc.max_steps and time_up(tc.max_train_seconds, train_clock, device)
            final = step == tc.max_steps or out_of_time

            if step % tc.log_interval == 0 or final:
                trackers.log(train_metrics(window, scheduler, sampler, loss_fn), step)
            is_best = False
            if step % tc.eval_interval == 0 or final:
                is_best = best.update(score(step))
            # before the save, so that a resume from it neither repeats the round nor its log rows
            # (a time limit's last step too: a resume with a bigger budget goes on exactly)
            if step < tc.max_steps and miner.due(step):
                refresh(encoder, step)
            stopping = distributed.any_rank(stop.signal_name is not None or best.patience_spent, device)
            stopping = stopping or step == stop_after
            periodic = step % tc.save_interval == 0
            if main and (is_best or stopping or periodic or final):
                save(step, best, periodic=periodic, is_best=is_best)
            if out_of_time:
                status = "time_limit"
                log.info("stopped at step %d (%s)", step, time_limit_reason(tc, train_clock))
                break
            if stopping:
                status, why = stop_status(stop.signal_name, best, last)
                log.info("stopped at step %d (%s)", step, why)
                break
    trackers.finish(status)
    distributed.barrier()
    return TrainResult(
        step=step,
        status=status,
        best_metric=best.value,
        best_metric_name=best.name,
        best_checkpoint=run_dir / checkpoint.best_name(best.name) if best.value is not None else None,
        last_checkpoint=last,
        run_dir=run_dir,
    )
