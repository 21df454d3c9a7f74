"""The Ray Train worker loop of `repb-ray train` (runs on every rank): DDP on the task's model and
per-sample loss, fed the coordinator's epoch plans through PruningSession; mixed precision,
gradient accumulation, clipping and torch.compile from the config."""

from __future__ import annotations

import tempfile
import time

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from repb_ray.config import Config
from repb_ray.layout import checkpoint_name
from repb_ray.task import nonfinite_scores_error
from repb_ray.tasks.loader import TaskRef
from repb_ray.torch.epoch import EpochSteps
from repb_ray.torch.evaluation import Evaluator, evaluation_due
from repb_ray.torch.schedule import PlanCosineLR, build_optimizer
from repb_ray.torch.scores import Scorer
from repb_ray.torch.step import TrainStep
from repb_ray.train import checkpoint
from repb_ray.train.cadence import CheckpointCadence
from repb_ray.train.clock import EpochClock
from repb_ray.train.collate import TensorCollate
from repb_ray.train.debug import debug_hooks
from repb_ray.train.messages import CHECKPOINT_KEEP, CHECKPOINT_STEP, EVAL_PENDING, EVAL_RESULT, EVAL_SKIPPED, PlanSummary
from repb_ray.train.prefetch import EpochsAhead
from repb_ray.train.session import PruningSession


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _allreduce(values: list, device, op=dist.ReduceOp.SUM) -> list[float]:
    t = torch.stack([v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in values]).double().to(device)
    if _dist_on():
        dist.all_reduce(t, op=op)
    return t.tolist()


def apply_optimizer_settings(optimizer, cfg: Config) -> None:
    """The config's optimizer settings over those restored from a checkpoint (a resumed run with
    changed settings uses the new ones, as the run's record notes)."""
    for group in optimizer.param_groups:
        if "weight_decay" in group:
            group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
            group["nesterov"] = cfg.momentum > 0


class Worker:
    """One rank's run, set up once: the task, the model (DDP when several ranks), the optimizer, the
    schedule, the step, the evaluator, the history so far (from a checkpoint) and the epoch to start at."""

    def __init__(self, config: dict):
        self.cfg = cfg = Config.from_dict(config["cfg"])
        self.task = TaskRef(cfg.task, cfg.task_args).load()
        self.session = session = PruningSession(config["pruning"])
        session.on_score_error = lambda ids, scores, epoch: nonfinite_scores_error(cfg.task, ids, scores, epoch)
        torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
        self.device = ray.train.torch.get_device()
        self.shard = ray.train.get_dataset_shard("train")
        self.feed = EpochsAhead(lambda epoch, skip, then: session.batches(
            self.shard, cfg.batch_size, self.device, skip=skip, epoch=epoch, then=then), cfg.epochs)
        ckpt = ray.train.get_checkpoint()
        if not ckpt:  # a fresh start: the first epoch's data (Ray Data's first execution) starts while the model is built
            self.start = session.start(None)
            self.feed.start(self.start)
        self._build_model()
        self.history, state, meta = [], None, {}
        self.own_buffers = None   # this rank's buffers at the checkpoint, for the evaluation it left pending
        if ckpt:
            state, meta = self._restore(ckpt)
        latest, taken = dict(meta), meta.get("position")   # position: where a checkpoint within an epoch was taken
        if taken is not None and taken["world_size"] != session.world_size:
            # it continues only at its own world size: the epoch starts over from the checkpoint at its start
            if taken["epoch_start"] is None:
                self._build_model()
                self.history, state, meta, self.own_buffers = [], None, {}, None
            else:
                state, meta = self._restore(_sibling(ckpt, taken["epoch_start"]))
        self.restarts: list = list(latest.get("restarts", []))   # every resume of the run so far (epoch, step, sizes)
        if ckpt:
            self.start = session.start(state)
        self.position = meta.get("position")   # continued there (the same world size)
        if ckpt and self.start <= cfg.epochs:
            self._note_restart(latest.get("world_size", session.world_size), taken)
        self.cadence = CheckpointCadence(cfg.checkpoint_every_steps, cfg.preemption_check_steps)
        self.at = (self.start, 0)   # (epoch, step) of the batch in hand: where a failure happened
        test = ray.train.get_dataset_shard("test") if config.get("has_test") else None
        self.evaluator = (Evaluator(self.task, lambda: _test_batches(test, cfg), self.device,
                                    precision=cfg.precision, mode=cfg.eval_mode, cache_bytes=cfg.eval_cache_mb * 2**20,
                                    world_size=session.world_size, model=self.raw_model) if test is not None else None)
        self.debug = debug_hooks(cfg, session)
        self.done = None        # an earlier epoch's metrics completed by its evaluation, sent with the next report
        self.boundary: dict = {}   # where the last epoch boundary's time went (this rank)
        self.last_step_end = None
        self.started: dict = {}   # when this start entered the loop (wall clock) and its setup's seconds

    def _build_model(self) -> None:
        cfg, world = self.cfg, self.session.world_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.raw_model = self.task.model().to(self.device)
        if cfg.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        model = ray.train.torch.prepare_model(self.raw_model) if world > 1 else self.raw_model
        if cfg.compile:
            model = torch.compile(model)
        self.optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.schedule = PlanCosineLR(self.optimizer, cfg.lr, cfg.epochs, cfg.warmup_epochs,
                                     constant=cfg.schedule == "constant")
        self.scorer = Scorer(cfg.score, self.raw_model, cfg.task)
        self.stepper = TrainStep(self.task, cfg.task, model, self.optimizer, self.scorer, precision=cfg.precision,
                                 grad_clip=cfg.grad_clip, normalize=cfg.ctr_normalize,
                                 channels_last=cfg.channels_last, device_type=self.device.type)

    def _restore(self, ckpt) -> tuple[str | None, dict]:
        """Model, optimizer, schedule, step state, history and this rank's buffers from `ckpt`; returns (the
        coordinator state's name, the checkpoint's meta)."""
        with ckpt.as_directory() as d:
            _, self.history, state, meta = checkpoint.load(d, model=self.raw_model, optimizer=self.optimizer,
                                                           schedule=self.schedule, map_location=self.device)
            self.own_buffers = checkpoint.load_buffers(d, self.session.rank, map_location=self.device)
        apply_optimizer_settings(self.optimizer, self.cfg)
        self.stepper.load_state_dict(meta.get("step", {}))
        return state, meta

    def _note_restart(self, world_before: int, taken: dict | None) -> None:
        """Record this (re)start in the run's restarts and say it on the console."""
        world = self.session.world_size
        step = self.position["step"] if self.position else 0
        self.restarts.append({"epoch": self.start, "step": step, "world_size_before": world_before, "world_size": world})
        where = f"epoch {self.start}" + (f", step {step}" if step else "")
        resized = f" on {world} worker(s) (was {world_before})" if world != world_before else ""
        over = (f"; the checkpoint at step {taken['step']} continues only on {taken['world_size']} worker(s), so the "
                "epoch starts over from its first step" if taken is not None and self.position is None else "")
        self.session.note(f"resumed at {where}{resized}{over}")

    def take_position(self, epoch: int) -> dict | None:
        """The position of the checkpoint this worker resumed from, for the epoch it was taken in (once)."""
        position, self.position = self.position, None
        return position if position is not None and position["epoch"] == epoch else None

    def checkpoint_within(self, epoch: int, steps: EpochSteps, loss_sum: torch.Tensor, why: str) -> None:
        """Every rank, after the same optimizer step: a checkpoint of the epoch so far (the weights, this
        position, every rank's loss so far, and the observations the shards hold, delivered first)."""
        ev = self.evaluator
        if ev is not None and ev.pending is not None:  # the weights saved are mid-epoch: evaluate the last epoch's now
            self.done = _complete(self.history, *ev.result())
            self.session.report_epoch(self.done)
        self.session.deliver()
        sums = _gather(loss_sum, self.device)  # collective: every rank has delivered when it returns
        position = {"epoch": epoch, "micro": steps.micro, "step": steps.step, "loss_sums": sums,
                    "world_size": self.session.world_size, "why": why,
                    "epoch_start": checkpoint_name(epoch - 1) if epoch > 1 else None}
        metrics = {"epoch": epoch, CHECKPOINT_STEP: steps.step,
                   **({EVAL_RESULT: self.done} if self.done is not None else {})}
        _report(self.session, epoch, metrics, self, position)
        self.done = None

    def resume_reports(self) -> None:
        """A resumed run first completes the evaluation its checkpoint left pending (its weights are
        loaded), and re-reports a finished run's last epoch (so a restarted Tune trial has its metrics)."""
        if self.evaluator is not None and self.history and self.history[-1].get(EVAL_PENDING):
            if self.own_buffers is not None:  # this rank's own statistics, as the uninterrupted run evaluates
                with torch.no_grad():
                    for name, buf in self.raw_model.named_buffers():
                        buf.copy_(self.own_buffers[name])
            self.evaluator.start(self.history[-1]["epoch"], self.raw_model)
            self.done = _complete(self.history, *self.evaluator.result())
            self.session.report_epoch(self.done)
        if self.history and self.start > self.cfg.epochs:
            ray.train.report(dict(self.history[-1]))

    def evaluate(self, epoch: int) -> dict | None:
        """Complete the previous epoch's evaluation, start this one's; its metrics when they are due now."""
        ev = self.evaluator
        if ev is None:
            return None
        if ev.pending is not None:
            self.done = _complete(self.history, *ev.result())
        if not evaluation_due(epoch, self.cfg.eval_every, self.cfg.epochs):
            return None
        ev.start(epoch, self.raw_model)
        return _prefixed(ev.result()[1]) if ev.mode == "sync" or epoch == self.cfg.epochs else None

    def close(self, failed: bool) -> None:
        if self.evaluator is not None:
            if failed and self.evaluator.pending is not None and self.session.world_size == 1:
                # a failing run still delivers the last evaluation (one rank: nothing to reduce across)
                self.session.report_epoch(_complete(self.history, *self.evaluator.result()))
            self.evaluator.close()
        if not failed:
            self.scorer.close()


def train_loop_per_worker(config: dict) -> list:
    entered = time.time()
    w = Worker(config)
    w.started = {"worker_entered_at": entered, "worker_setup_s": time.time() - entered}
    w.resume_reports()
    try:
        for epoch in range(w.start, w.cfg.epochs + 1):
            run_epoch(w, epoch)
    except BaseException as exc:
        w.session.record_failure(*w.at, exc)
        w.close(failed=True)
        raise
    w.close(failed=False)
    return w.history


def run_epoch(w: Worker, epoch: int) -> None:
    """Train on the epoch's plan, decide the next, evaluate, report and checkpoint."""
    cfg, session, clock = w.cfg, w.session, EpochClock(w.last_step_end)
    steps = EpochSteps(session.begin_epoch(epoch), cfg.batch_size, cfg.grad_accum_steps)
    summary = session.summary   # this epoch's plan, as published
    loss_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    position = w.take_position(epoch)
    steps.start([w.schedule], resumed_after=position["micro"] if position is not None else 0)
    if position is not None:  # resumed within this epoch: its loss so far came with the checkpoint
        loss_sum += position["loss_sums"][session.rank]
    w.debug.plan(epoch)
    for batch in clock.timed(w.feed.batches(epoch, skip=steps.micro)):
        if w.evaluator is not None and w.evaluator.pending is not None:
            w.evaluator.release()  # the previous epoch's evaluation runs once this epoch's data flows
        step = steps.step
        w.at = (epoch, step)
        w.debug.batch(epoch, step, batch)
        loss, scores = w.stepper.batch(batch, steps.group_size)
        w.debug.scores(scores)
        why = None
        if steps.advance():
            w.stepper.step()
            w.schedule.step()
            why = w.cadence.due(steps.step, steps.done)
        clock.lap("compute")
        session.observe(batch["id"], scores, step)
        clock.lap("observe")
        loss_sum += loss
        if why is not None:
            w.checkpoint_within(epoch, steps, loss_sum, why)
    w.last_step_end = clock.mark("trained")
    session.end_epoch()   # the next epoch's reads started with this epoch's last block and wait for its plan
    clock.mark("decided")
    w.debug.end(epoch)
    test_metrics = w.evaluate(epoch)
    clock.mark("evaluated")
    metrics = epoch_metrics(w, summary, steps, clock, loss_sum, test_metrics)
    w.history.append(metrics)
    if w.done is not None:
        session.report_epoch(w.done)
    session.report_epoch(metrics)  # (again with its test metrics when they are known)
    clock.mark("reported")
    _report(session, epoch, {**metrics, **({EVAL_RESULT: w.done} if w.done is not None else {})}, w)
    w.done = None
    w.boundary = clock.boundary()


def epoch_metrics(w: Worker, summary: PlanSummary, steps: EpochSteps, clock: EpochClock, loss_sum,
                  test_metrics: dict | None) -> dict:
    """The epoch's record: what the summary, the console, Tune's reporter and tracking all read."""
    info = steps.info
    loss_total, batches_all = _allreduce([loss_sum, steps.micro], w.device)
    (stall_max,) = _allreduce([clock.stall], w.device, op=dist.ReduceOp.MAX)
    metrics = {**info.log(), "world_size": info.world_size, "steps": len(steps.groups),
               "cum_pruned_fraction": info.cum_pruned_fraction,
               "samples_trained": int(sum(info.plan_sizes[: info.epoch])), "train_loss": loss_total / max(batches_all, 1),
               **clock.times(), "weight_mean": summary.weight_mean, "weight_max": summary.weight_max,
               "plan_digest": summary.digest, "lr": w.schedule.get_last_lr()[0],
               **({"eval_mode": w.evaluator.mode} if w.evaluator is not None else {}),
               **{k: v for k, v in summary.decision.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    if stall_max >= 0:  # the boundary before this epoch (none before a worker's first epoch)
        metrics["boundary_stall_s"] = stall_max
        first = {} if clock.first_batch_s is None else {"first_batch_s": clock.first_batch_s}
        waiting = {"reads_waiting": summary.timing.get("reads_waiting", 0)}  # this epoch's reads ahead of its plan
        metrics.update({f"boundary_{k}": v for k, v in {**w.boundary, **first, **waiting}.items()})
    if info.epoch == w.start:  # this start's first epoch: when the worker began (the run's time breakdown)
        metrics.update(w.started)
    restarts = [r for r in w.restarts if r["epoch"] == info.epoch]
    if restarts:
        metrics["restarts"] = restarts
    if test_metrics is not None:
        metrics.update(test_metrics)
    elif w.evaluator is not None:  # evaluated while the next epoch trains, or not this epoch (eval_every)
        metrics[EVAL_PENDING if w.evaluator.pending == info.epoch else EVAL_SKIPPED] = True
    return metrics


def _prefixed(metrics: dict) -> dict:
    return {f"test_{k}": v for k, v in metrics.items()}


def _complete(history: list, epoch: int, metrics: dict) -> dict:
    """Put an epoch's test metrics into its row of `history`; returns the completed row."""
    row = next(h for h in reversed(history) if h["epoch"] == epoch)
    row.pop(EVAL_PENDING, None)
    row.update(_prefixed(metrics))
    return dict(row)


def _test_batches(test, cfg: Config):
    """The test shard's batches on the CPU: the Evaluator copies them to the device on its own stream."""
    return test.iter_torch_batches(batch_size=cfg.eval_batch_size, collate_fn=TensorCollate(None),
                                   prefetch_batches=cfg.prefetch_batches)


def _sibling(ckpt, name: str):
    """The checkpoint `name` beside `ckpt` in the run's storage (the one at the start of its epoch)."""
    import posixpath
    return ray.train.Checkpoint(path=posixpath.join(posixpath.dirname(str(ckpt.path).rstrip("/")), name),
                                filesystem=ckpt.filesystem)


def _gather(value: torch.Tensor, device) -> list[float]:
    """A float64 scalar of every rank, in rank order, on every rank."""
    t = value.detach().to(device=device, dtype=torch.float64).reshape(1)
    if not _dist_on():
        return t.tolist()
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [float(x.item()) for x in out]


def _report(session, epoch: int, metrics: dict, w: Worker, position: dict | None = None) -> None:
    """Report `metrics` with a checkpoint at the end of `epoch` (or within it, at `position`)."""
    step = position["step"] if position is not None else 0
    attempt = len(w.restarts)   # a run that went back to an epoch's start takes its steps again: their own names
    state = session.save(epoch - 1 if position is not None else epoch, step, attempt)
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        pending = position is None and bool(w.history) and bool(w.history[-1].get(EVAL_PENDING))
        if pending and session.world_size > 1 and checkpoint.save_buffers(d, w.raw_model, session.rank):
            ckpt = ray.train.Checkpoint.from_directory(d)  # every rank's folder: Ray Train merges them
        if session.rank == 0:
            extra = {"step": w.stepper.state_dict(), "owner_generation": session.handle.owner_generation,
                     "world_size": session.world_size, "restarts": w.restarts,
                     **({"position": position} if position is not None else {})}
            checkpoint.save(d, model=w.raw_model, optimizer=w.optimizer, schedule=w.schedule, epoch=epoch,
                            history=w.history, state=state, extra=extra)
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report({**metrics, CHECKPOINT_KEEP: epoch if position is None else -1}, checkpoint=ckpt,
                         checkpoint_dir_name=checkpoint_name(epoch, step, attempt))
