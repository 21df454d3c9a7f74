"""The Ray Train worker loop (runs on every rank): DDP training on the coordinator's epoch plans."""

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
from repb_ray.data.arrays import to_features
from repb_ray.models import build_model
from repb_ray.torch.augment import random_crop_flip
from repb_ray.torch.schedule import PlanCosineLR
from repb_ray.torch.step import evaluate, train_step
from repb_ray.train import checkpoint


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _allreduce(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _dist_on():
        dist.all_reduce(t)
    return t.tolist()


class _ObservationSender:
    """Buffers (step, id, score) and sends them to the coordinator every `every` steps, without waiting."""

    def __init__(self, coord, generation, epoch, rank, every):
        self.coord, self.generation, self.epoch, self.rank, self.every = coord, generation, epoch, rank, every
        self.chunks, self.refs, self.steps_buffered = [], [], 0

    def add(self, step: int, ids: np.ndarray, scores: np.ndarray) -> None:
        self.chunks.append((np.full(ids.shape[0], step, np.int64), ids, scores))
        self.steps_buffered += 1
        if self.steps_buffered >= self.every:
            self._send(final=False)

    def _send(self, final: bool) -> None:
        if self.chunks:
            cols = [np.concatenate(c) for c in zip(*self.chunks)]
        else:  # a rank with no step left still reports, so the coordinator can close the epoch
            cols = [np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)]
        self.refs.append(self.coord.observe.remote(self.generation, self.epoch, self.rank, *cols, final))
        self.chunks, self.steps_buffered = [], 0

    def close(self) -> None:
        self._send(final=True)
        ray.get(self.refs)


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
    raise RuntimeError(f"injected failure at epoch {epoch}, step {step}, rank {rank} (fail_at)")


def train_loop_per_worker(config: dict) -> list:
    cfg = Config.from_dict(config["cfg"])
    coord, num_samples = config["coordinator"], config["num_samples"]
    test = ray.get(config["test_ref"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.torch_threads or max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, config["input_shape"], test.num_classes).to(device)
    model = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    schedule = PlanCosineLR(optimizer, cfg.lr, cfg.epochs, cfg.warmup_epochs)
    raw_model = model.module if hasattr(model, "module") else model

    start, history, policy_state = 1, [], None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            done, history, policy_state = checkpoint.load(d, model=raw_model, optimizer=optimizer,
                                                          schedule=schedule, map_location=device)
        start = done + 1
    if rank == 0:
        ray.get(coord.reset.remote(policy_state))  # the actor may hold a failed epoch's partial counts
    if _dist_on():
        dist.barrier()
    info = ray.get(coord.summary.remote())
    generation = info["generation"]
    shard = ray.train.get_dataset_shard("train")
    augment = torch.Generator() if cfg.use_augment else None

    for epoch in range(start, cfg.epochs + 1):
        t0 = time.perf_counter()
        info = ray.get(coord.wait_plan.remote(generation, epoch, cfg.coordinator_timeout_s))
        schedule.start_epoch(epoch, math.ceil(info["kept"] / world / cfg.batch_size))
        if cfg.audit and rank == 0:
            _, plan_ids, plan_weights = ray.get(coord.plan_arrays.remote())
            os.makedirs(os.path.join(cfg.run_dir, "audit"), exist_ok=True)
            np.savez(os.path.join(cfg.run_dir, "audit", f"plan{epoch:03d}.npz"), ids=plan_ids, weights=plan_weights)
        sender = _ObservationSender(coord, generation, epoch, rank, cfg.observe_every)
        audit, loss_sum, steps = [], 0.0, 0
        for step, batch in enumerate(shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy")):
            if (batch["epoch"] != epoch).any():
                raise RuntimeError(f"rank {rank} got rows of plan {int(batch['epoch'][0])} in epoch {epoch}")
            _maybe_fail(cfg, epoch, step, rank, coord)
            x = torch.as_tensor(np.array(to_features(test.name, batch["x"])))
            if augment is not None:
                augment.manual_seed(((cfg.seed * 100_003 + epoch) * 100_003 + step) * 257 + rank)  # resumable
                x = random_crop_flip(x, augment)
            x = x.to(device)
            y = torch.as_tensor(np.array(batch["y"])).to(device)
            w = torch.as_tensor(np.array(batch["weight"])).to(device)
            loss, scores = train_step(model, optimizer, x, y, w, score=cfg.score, normalize=cfg.ctr_normalize)
            schedule.step()
            sender.add(step, batch["id"], scores)
            loss_sum, steps = loss_sum + loss, steps + 1
            if cfg.audit:
                audit.append((np.full(len(batch["id"]), step), batch["id"], batch["weight"]))
        sender.close()
        train_time = time.perf_counter() - t0
        nxt = ray.get(coord.wait_plan.remote(generation, epoch + 1, cfg.coordinator_timeout_s))
        if cfg.audit:
            _write_audit(cfg.run_dir, epoch, rank, audit)
        metrics = evaluate(model, test, batch_size=cfg.eval_batch_size, device=device, rank=rank, world_size=world)
        loss_sum, steps_all = _allreduce([loss_sum, float(steps)], device)
        sizes = nxt["sizes"][:epoch]
        metrics.update({
            "epoch": epoch, "kept": info["kept"], "steps": steps,
            "pruned_fraction": 1.0 - info["kept"] / num_samples,
            "cum_pruned_fraction": 1.0 - sum(sizes) / (epoch * num_samples),
            "samples_trained": int(sum(sizes)), "train_loss": loss_sum / max(steps_all, 1),
            "epoch_time_s": time.perf_counter() - t0, "train_time_s": train_time,
            "weight_mean": info["weight_mean"], "weight_max": info["weight_max"],
            "plan_digest": info["digest"], "lr": schedule.get_last_lr()[0],
        })
        history.append(metrics)
        _report(cfg, rank, epoch, metrics, history, coord, raw_model, optimizer, schedule)
    return history


def _report(cfg, rank, epoch, metrics, history, coord, model, optimizer, schedule) -> None:
    with tempfile.TemporaryDirectory() as d:
        ckpt = None
        if rank == 0:
            checkpoint.save(d, model=model, optimizer=optimizer, schedule=schedule,
                            policy_state=ray.get(coord.state_dict.remote()), epoch=epoch, history=history)
            ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:03d}")


def _write_audit(run_dir: str, epoch: int, rank: int, audit: list) -> None:
    d = os.path.join(run_dir, "audit")
    os.makedirs(d, exist_ok=True)
    if audit:
        steps, ids, weights = (np.concatenate(c) for c in zip(*audit))
    else:
        steps, ids, weights = np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    np.savez(os.path.join(d, f"epoch{epoch:03d}_rank{rank}.npz"), steps=steps, ids=ids, weights=weights)
