"""The Ray Train worker loop of `repb-ray train` (runs on every rank): DDP on the task's model and
per-sample loss, fed the coordinator's epoch plans through PruningSession."""

from __future__ import annotations

import os
import signal
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from repb_ray.config import Config
from repb_ray.task import TaskRef, nonfinite_scores_error
from repb_ray.torch.schedule import PlanCosineLR, build_optimizer
from repb_ray.torch.scores import Scorer
from repb_ray.torch.step import evaluate, train_step
from repb_ray.train import checkpoint
from repb_ray.train.pruning import PruningSession


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _allreduce(values: list, device) -> list[float]:
    t = torch.stack([v if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in values]).double().to(device)
    if _dist_on():
        dist.all_reduce(t)
    return t.tolist()


def _maybe_fail(cfg: Config, epoch: int, step: int, rank: int, coord) -> None:
    f = cfg.fail_at
    if not f or (f["epoch"], f.get("step", 0), f.get("rank", 0)) != (epoch, step, rank):
        return
    marker = os.path.join(cfg.run_dir, f".injected_{f.get('kind', 'worker')}_e{epoch}_s{step}_r{rank}")
    if os.path.exists(marker):
        return  # injected once already: this is the resumed attempt
    os.makedirs(cfg.run_dir, exist_ok=True)
    open(marker, "w").close()
    if f.get("kind", "worker") == "coordinator":
        try:
            ray.get(coord.die.remote())
        except ray.exceptions.RayActorError:
            pass
        return
    if f.get("kind") == "kill":  # the process dies, as on an OOM kill or a lost node
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"injected failure at epoch {epoch}, step {step}, rank {rank} (fail_at)")


def train_loop_per_worker(config: dict) -> list:
    cfg = Config.from_dict(config["cfg"])
    task_ref = TaskRef(cfg.task, cfg.task_args)
    task = task_ref.load()
    session = PruningSession(config["pruning"])
    session.on_score_error = lambda ids, scores, epoch: nonfinite_scores_error(cfg.task, ids, scores, epoch)
    rank, world = session.rank, session.world_size
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        raw_model = task.model().to(device)
    model = ray.train.torch.prepare_model(raw_model) if world > 1 else raw_model
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = PlanCosineLR(optimizer, cfg.lr, cfg.epochs, cfg.warmup_epochs, constant=cfg.schedule == "constant")
    scorer = Scorer(cfg.score, raw_model, cfg.task)

    history, location = [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, history, location = checkpoint.load(d, model=raw_model, optimizer=optimizer, schedule=schedule,
                                                   map_location=device)
    start = session.start(location)
    shard = ray.train.get_dataset_shard("train")
    test = ray.train.get_dataset_shard("test") if config.get("has_test") else None
    first = True

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        session.begin_epoch(epoch)
        info = session.plan
        schedule.start_epoch(epoch, session.steps_per_epoch(cfg.batch_size))
        if cfg.audit and rank == 0:
            ids, weights = ray.get(session.front.plan_arrays.remote())
            os.makedirs(os.path.join(cfg.run_dir, "audit"), exist_ok=True)
            np.savez(os.path.join(cfg.run_dir, "audit", f"plan{epoch:03d}.npz"), ids=ids, weights=weights)
        audit = []
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        steps = 0
        data_wait = 0.0  # time this rank waited for its next batch (the data plane's share of the epoch)
        batches = iter(session.batches(shard, cfg.batch_size, device))
        while True:
            t_wait = time.perf_counter()
            batch = next(batches, None)
            data_wait += time.perf_counter() - t_wait
            if batch is None:
                break
            _maybe_fail(cfg, epoch, session.step, rank, session.front)
            loss, scores = train_step(task, cfg.task, model, optimizer, batch, scorer,
                                      normalize=cfg.ctr_normalize, first=first)
            first = False
            schedule.step()
            if cfg.audit:
                audit.append((np.full(len(batch["id"]), session.step), batch["id"].numpy().copy(),
                              batch["weight"].cpu().numpy().copy()))
            session.observe(batch, scores)
            loss_sum += loss
            steps += 1
        train_time = time.perf_counter() - t0
        nxt = session.end_epoch()
        if cfg.audit:
            _write_audit(cfg.run_dir, epoch, rank, audit)
        metrics = {f"test_{k}": v for k, v in
                   (evaluate(task, raw_model, _test_batches(test, cfg, device), device) if test else {}).items()}
        loss_total, steps_all = _allreduce([loss_sum, steps], device)
        sizes = nxt["sizes"][:epoch]
        n = info["num_samples"]
        metrics.update({
            "epoch": epoch, "kept": info["kept"], "steps": steps,
            "pruned_fraction": 1.0 - info["kept"] / n, "cum_pruned_fraction": 1.0 - sum(sizes) / (epoch * n),
            "samples_trained": int(sum(sizes)), "train_loss": loss_total / max(steps_all, 1),
            "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time, "data_wait_s": data_wait,
            "weight_mean": info["weight_mean"], "weight_max": info["weight_max"],
            "plan_digest": info["digest"], "lr": schedule.get_last_lr()[0],
            **{k: v for k, v in info["decision"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        })
        history.append(metrics)
        session.report_epoch(metrics)
        _report(session, epoch, metrics, history, raw_model, optimizer, schedule)
    scorer.close()
    return history


def _test_batches(test, cfg: Config, device):
    from repb_ray.train.pruning import TensorCollate
    return test.iter_torch_batches(batch_size=cfg.eval_batch_size, collate_fn=TensorCollate(device),
                                   prefetch_batches=cfg.prefetch_batches)


def _report(session, epoch, metrics, history, model, optimizer, schedule) -> None:
    location = session.save(epoch)
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if session.rank == 0:
            checkpoint.save(d, model=model, optimizer=optimizer, schedule=schedule, epoch=epoch, history=history,
                            state_location=location)
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
