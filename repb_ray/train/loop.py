"""The Ray Train worker loop of `repb-ray train` (runs on every rank): DDP on the task's model and
per-sample loss, fed the coordinator's epoch plans through PruningSession; mixed precision,
gradient accumulation, clipping and torch.compile from the config."""

from __future__ import annotations

import tempfile

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
from repb_ray.torch.evaluation import Evaluator
from repb_ray.torch.schedule import PlanCosineLR, build_optimizer
from repb_ray.torch.scores import Scorer
from repb_ray.torch.step import TrainStep
from repb_ray.train import checkpoint
from repb_ray.train.clock import EpochClock
from repb_ray.train.collate import TensorCollate
from repb_ray.train.debug import debug_hooks
from repb_ray.train.messages import EVAL_PENDING, EVAL_RESULT, PlanSummary
from repb_ray.train.prefetch import Ahead
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
        self._build_model()
        self.history, state = [], None
        ckpt = ray.train.get_checkpoint()
        if ckpt:
            with ckpt.as_directory() as d:
                _, self.history, state, meta = checkpoint.load(d, model=self.raw_model, optimizer=self.optimizer,
                                                               schedule=self.schedule, map_location=self.device)
            apply_optimizer_settings(self.optimizer, cfg)
            self.stepper.load_state_dict(meta.get("step", {}))
        self.start = session.start(state)
        self.shard = ray.train.get_dataset_shard("train")
        test = ray.train.get_dataset_shard("test") if config.get("has_test") else None
        self.evaluator = (Evaluator(self.task, lambda: _test_batches(test, cfg), self.device,
                                    precision=cfg.precision, mode=cfg.eval_mode, cache_bytes=cfg.eval_cache_mb * 2**20,
                                    world_size=session.world_size, model=self.raw_model) if test is not None else None)
        self.debug = debug_hooks(cfg, session)
        self.ahead = None       # the next epoch's batches, fetched from the moment its plan is published
        self.done = None        # an earlier epoch's metrics completed by its evaluation, sent with the next report
        self.boundary: dict = {}   # where the last epoch boundary's time went (this rank)
        self.last_step_end = None

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

    def resume_reports(self) -> None:
        """A resumed run first completes the evaluation its checkpoint left pending (its weights are
        loaded), and re-reports a finished run's last epoch (so a restarted Tune trial has its metrics)."""
        if self.evaluator is not None and self.history and self.history[-1].get(EVAL_PENDING):
            self.evaluator.start(self.history[-1]["epoch"], self.raw_model)
            self.done = _complete(self.history, *self.evaluator.result())
            self.session.report_epoch(self.done)
        if self.history and self.start > self.cfg.epochs:
            ray.train.report(dict(self.history[-1]))

    def batches(self):
        """This epoch's batches: those fetched ahead at the last boundary, or from now."""
        ahead, self.ahead = self.ahead, None
        return ahead if ahead is not None else Ahead(self.session.batches(self.shard, self.cfg.batch_size, self.device))

    def evaluate(self, epoch: int) -> dict | None:
        """Complete the previous epoch's evaluation, start this one's; its metrics when they are due now."""
        ev = self.evaluator
        if ev is None:
            return None
        if ev.pending is not None:
            self.done = _complete(self.history, *ev.result())
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
    w = Worker(config)
    w.resume_reports()
    try:
        for epoch in range(w.start, w.cfg.epochs + 1):
            run_epoch(w, epoch)
    except BaseException:
        w.close(failed=True)
        raise
    w.close(failed=False)
    return w.history


def run_epoch(w: Worker, epoch: int) -> None:
    """Train on the epoch's plan, decide the next, evaluate, report and checkpoint."""
    cfg, session, clock = w.cfg, w.session, EpochClock(w.last_step_end)
    steps = EpochSteps(session.begin_epoch(epoch), cfg.batch_size, cfg.grad_accum_steps)
    summary = session.summary   # this epoch's plan, as published
    steps.start_schedules([w.schedule])
    w.debug.plan(epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=w.device)
    for batch in clock.timed(w.batches()):
        if steps.micro == 0 and w.evaluator is not None:
            w.evaluator.release()  # the previous epoch's evaluation runs once this epoch's data flows
        step = steps.step
        w.debug.batch(epoch, step, batch)
        loss, scores = w.stepper.batch(batch, steps.group_size)
        if steps.advance():
            w.stepper.step()
            w.schedule.step()
        clock.lap("compute")
        session.observe(batch["id"], scores, step)
        clock.lap("observe")
        loss_sum += loss
    w.last_step_end = clock.mark("trained")
    session.end_epoch()
    clock.mark("decided")
    if epoch < cfg.epochs:  # the next epoch's data starts while this boundary's work runs
        w.ahead = Ahead(session.batches(w.shard, cfg.batch_size, w.device))
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
               **{k: v for k, v in summary.decision.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    if stall_max >= 0:  # the boundary before this epoch (none before a worker's first epoch)
        metrics["boundary_stall_s"] = stall_max
        first = {} if clock.first_batch_s is None else {"first_batch_s": clock.first_batch_s}
        metrics.update({f"boundary_{k}": v for k, v in {**w.boundary, **first}.items()})
    if test_metrics is not None:
        metrics.update(test_metrics)
    elif w.evaluator is not None:
        metrics[EVAL_PENDING] = True
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


def _report(session, epoch: int, metrics: dict, w: Worker) -> None:
    state = session.save(epoch)
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if session.rank == 0:
            checkpoint.save(d, model=w.raw_model, optimizer=w.optimizer, schedule=w.schedule, epoch=epoch,
                            history=w.history, state=state, extra={"step": w.stepper.state_dict(),
                                                                   "owner_generation": session.handle.owner_generation})
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint_name(epoch))
