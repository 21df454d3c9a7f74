"""The Ray Train worker loop of `repb-ray train` (runs on every rank): DDP on the task's model and
per-sample loss, fed the coordinator's epoch plans through PruningSession; mixed precision,
gradient accumulation, clipping and torch.compile from the config."""

from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from repb_ray.config import Config
from repb_ray.task import nonfinite_scores_error
from repb_ray.tasks.loader import TaskRef
from repb_ray.torch.evaluation import Evaluator
from repb_ray.torch.schedule import PlanCosineLR, build_optimizer
from repb_ray.torch.scores import Scorer
from repb_ray.torch.step import TrainStep, group_sizes
from repb_ray.train import checkpoint
from repb_ray.train.collate import TensorCollate
from repb_ray.train.faults import maybe_fail
from repb_ray.train.messages import EVAL_PENDING, EVAL_RESULT
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


def train_loop_per_worker(config: dict) -> list:
    cfg = Config.from_dict(config["cfg"])
    task = TaskRef(cfg.task, cfg.task_args).load()
    session = PruningSession(config["pruning"])
    session.on_score_error = lambda ids, scores, epoch: nonfinite_scores_error(cfg.task, ids, scores, epoch)
    world = session.world_size
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        raw_model = task.model().to(device)
    if cfg.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(raw_model) if world > 1 else raw_model
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = PlanCosineLR(optimizer, cfg.lr, cfg.epochs, cfg.warmup_epochs, constant=cfg.schedule == "constant")
    scorer = Scorer(cfg.score, raw_model, cfg.task)
    stepper = TrainStep(task, cfg.task, model, optimizer, scorer, precision=cfg.precision, grad_clip=cfg.grad_clip,
                        normalize=cfg.ctr_normalize, channels_last=cfg.channels_last, device_type=device.type)

    history, state = [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, history, state, meta = checkpoint.load(d, model=raw_model, optimizer=optimizer, schedule=schedule,
                                                      map_location=device)
        apply_optimizer_settings(optimizer, cfg)
        stepper.load_state_dict(meta.get("step", {}))
    start = session.start(state)
    shard = ray.train.get_dataset_shard("train")
    test = ray.train.get_dataset_shard("test") if config.get("has_test") else None
    evaluator = (Evaluator(task, lambda: _test_batches(test, cfg, device), device, precision=cfg.precision,
                           mode=cfg.eval_mode, cache_bytes=cfg.eval_cache_mb * 2**20, world_size=world)
                 if test is not None else None)
    done = None  # an earlier epoch's metrics completed by its evaluation, sent with the next report
    if evaluator is not None and history and history[-1].get(EVAL_PENDING):
        # resumed from the checkpoint of an epoch whose evaluation had not finished: its weights are loaded
        evaluator.start(history[-1]["epoch"], raw_model)
        done = _complete(history, *evaluator.result())
        session.report_epoch(done)
    if history and start > cfg.epochs:
        # resumed from the last epoch's checkpoint, nothing left to train: the final epoch is reported
        # again, so whatever follows this run's reports (a restarted Tune trial) has its final metrics
        ray.train.report(dict(history[-1]))

    try:
        _epochs(cfg, task, session, shard, evaluator, history, stepper, schedule, raw_model, optimizer, device, start,
                done)
    except BaseException:
        if evaluator is not None and evaluator.pending is not None and world == 1:
            # a failing run still delivers the last evaluation (one rank: nothing to reduce across)
            session.report_epoch(_complete(history, *evaluator.result()))
        raise
    finally:
        if evaluator is not None:
            evaluator.close()
    scorer.close()
    return history


def _epochs(cfg, task, session, shard, evaluator, history, stepper, schedule, raw_model, optimizer, device, start,
            done) -> None:
    """The epochs start..cfg.epochs: train on the plan, decide the next, evaluate, report and checkpoint."""
    rank, world = session.rank, session.world_size
    ahead = None          # the next epoch's batches, fetched from the moment its plan is published
    boundary: dict = {}   # where the last epoch boundary's time went (this rank), reported with the next epoch
    last_step_end = None
    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        info = session.begin_epoch(epoch)
        per_rank = info.kept // world
        groups = group_sizes(per_rank, cfg.batch_size, cfg.grad_accum_steps)
        last_batch = math.ceil(per_rank / cfg.batch_size) - 1
        schedule.start_epoch(epoch, len(groups))
        if cfg.audit and rank == 0:
            ids, weights = ray.get(session.coordinator.plan_arrays.remote())
            os.makedirs(os.path.join(cfg.run_dir, "audit"), exist_ok=True)
            np.savez(os.path.join(cfg.run_dir, "audit", f"plan{epoch:03d}.npz"), ids=ids, weights=weights)
        audit = []
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        batches_done = 0
        data_wait = compute = observing = 0.0  # this rank's time waiting for batches, in the steps, observing
        batches = iter(ahead if ahead is not None else Ahead(session.batches(shard, cfg.batch_size, device)))
        ahead, first_step = None, None
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - t_wait
            if batch is None:
                break
            if first_step is None:
                first_step = time.perf_counter()
                boundary["first_batch_s"] = first_step - t_wait
            step, within = divmod(batches_done, cfg.grad_accum_steps)
            maybe_fail(cfg.fail_at, cfg.run_dir, epoch, step, rank, session)
            t_step = time.perf_counter()
            loss, scores = stepper.batch(batch, groups[step] if cfg.grad_accum_steps > 1 else None)
            if within == cfg.grad_accum_steps - 1 or batches_done == last_batch:
                stepper.step()
                schedule.step()
            t_observe = time.perf_counter()
            compute += t_observe - t_step
            if cfg.audit:
                audit.append((np.full(len(batch["id"]), step), batch["id"].numpy().copy(),
                              batch["weight"].cpu().numpy().copy()))
            session.observe(batch, scores, step if cfg.grad_accum_steps > 1 else None)
            observing += time.perf_counter() - t_observe
            loss_sum += loss
            batches_done += 1
        stall = first_step - last_step_end if first_step is not None and last_step_end is not None else -1.0
        last_step_end = time.perf_counter()
        train_time = last_step_end - t0
        nxt = session.end_epoch()
        t_decided = time.perf_counter()
        if epoch < cfg.epochs:  # the next epoch's data starts while this boundary's work runs
            ahead = Ahead(session.batches(shard, cfg.batch_size, device))
        if cfg.audit:
            _write_audit(cfg.run_dir, epoch, rank, audit)
        # the evaluation of the previous epoch ran while this one trained; this epoch's starts now
        test_metrics = None
        if evaluator is not None:
            if evaluator.pending is not None:
                done = _complete(history, *evaluator.result())
            evaluator.start(epoch, raw_model)
            if cfg.eval_mode == "sync" or epoch == cfg.epochs:
                test_metrics = _prefixed(evaluator.result()[1])
        t_evaluated = time.perf_counter()
        loss_total, batches_all = _allreduce([loss_sum, batches_done], device)
        (stall_max,) = _allreduce([stall], device, op=dist.ReduceOp.MAX)
        sizes = nxt.plan_sizes[:epoch]
        n = info.num_samples
        metrics = {
            "epoch": epoch, "kept": info.kept, "steps": len(groups),
            "pruned_fraction": 1.0 - info.kept / n, "cum_pruned_fraction": 1.0 - sum(sizes) / (epoch * n),
            "samples_trained": int(sum(sizes)), "train_loss": loss_total / max(batches_all, 1),
            "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time, "data_wait_s": data_wait,
            "compute_s": compute, "observe_s": observing,
            "weight_mean": info.weight_mean, "weight_max": info.weight_max,
            "plan_digest": info.digest, "lr": schedule.get_last_lr()[0],
            **{k: v for k, v in info.decision.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        }
        if stall_max >= 0:  # the boundary before this epoch (none before a worker's first epoch)
            metrics["boundary_stall_s"] = stall_max
            metrics.update({f"boundary_{k}": v for k, v in boundary.items()})
        if test_metrics is not None:
            metrics.update(test_metrics)
        elif evaluator is not None:
            metrics[EVAL_PENDING] = True
        history.append(metrics)
        if done is not None:
            session.report_epoch(done)
        session.report_epoch(metrics)  # (again with its test metrics when they are known)
        t_report = time.perf_counter()
        _report(session, epoch, {**metrics, **({EVAL_RESULT: done} if done is not None else {})}, history,
                raw_model, optimizer, schedule, stepper)
        done = None
        boundary = {"decision_s": t_decided - last_step_end, "eval_s": t_evaluated - t_decided,
                    "report_s": time.perf_counter() - t_report}



def _prefixed(metrics: dict) -> dict:
    return {f"test_{k}": v for k, v in metrics.items()}


def _complete(history: list, epoch: int, metrics: dict) -> dict:
    """Put an epoch's test metrics into its row of `history`; returns the completed row."""
    row = next(h for h in reversed(history) if h["epoch"] == epoch)
    row.pop(EVAL_PENDING, None)
    row.update(_prefixed(metrics))
    return dict(row)


def _test_batches(test, cfg: Config, device):
    return test.iter_torch_batches(batch_size=cfg.eval_batch_size, collate_fn=TensorCollate(device),
                                   prefetch_batches=cfg.prefetch_batches)


def _report(session, epoch, metrics, history, model, optimizer, schedule, stepper) -> None:
    state = session.save(epoch)
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if session.rank == 0:
            checkpoint.save(d, model=model, optimizer=optimizer, schedule=schedule, epoch=epoch, history=history,
                            state=state, extra={"step": stepper.state_dict(),
                                                "owner_generation": session.handle.owner_generation})
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:03d}")


def _write_audit(run_dir: str, epoch: int, rank: int, audit: list) -> None:
    d = os.path.join(run_dir, "audit")
    os.makedirs(d, exist_ok=True)
    if audit:
        steps, ids, weights = (np.concatenate(c) for c in zip(*audit))
    else:
        steps, ids, weights = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    np.savez(os.path.join(d, f"epoch{epoch:03d}_rank{rank}.npz"), steps=steps, ids=ids, weights=weights,
             node=np.array(ray.get_runtime_context().get_node_id()))
