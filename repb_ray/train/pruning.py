"""RePB in your own Ray Train loop, driver side: `Pruning` creates the run's coordinator and binds
your dataset to its plans; its `handle` is what each worker's PruningSession needs. The framework's
own run is built from the same pieces. Runs in the driver.

    pruning = Pruning("repb", {"rho": 0.5, "window": 1}, num_samples=n, num_workers=2, storage_path=STORAGE, name=NAME)
    trainer = TorchTrainer(loop, datasets={"train": pruning.dataset(ds)}, dataset_config=pruning.data_config(),
                           train_loop_config={"pruning": pruning.handle}, ...)

    def loop(config):
        session = PruningSession(config["pruning"])
        session.start(state_from_your_checkpoint)      # None on a fresh start
        shard = ray.train.get_dataset_shard("train")
        for epoch in session.epochs(10):
            for batch in session.batches(shard, batch_size=64):
                per_sample = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
                loss = weighted_loss(per_sample, batch["weight"])
                opt.zero_grad(); loss.backward(); opt.step()
                session.observe(batch["id"], per_sample)
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from repb_ray import storage
from repb_ray.core.registry import policy_class
from repb_ray.layout import COORDINATOR_DIR
from repb_ray.train import coordinator, progress
from repb_ray.train.data_config import PlanDataConfig


@dataclass(frozen=True)
class PruningHandle:
    """What a worker needs: the coordinator, the seed and the protocol's knobs (no paths: the
    coordinator alone knows where its states go)."""

    coordinator: object
    seed: int
    num_samples: int
    stateful: bool                # whether the coordinator saves states next to checkpoints
    observe_every: int = 32
    timeout_s: float = 600.0
    shuffle_rows: int = 4096
    owner_generation: int | None = None  # the run's owner (ownership.Fence), written into every checkpoint
    progress: object = None              # the run's ProgressBoard (rank 0 posts there), or None


class Pruning:
    """Driver side of a pruned run. `policy` and `policy_args` as for repb_ray.core.make_policy;
    `storage_path` (a path or URI every node reaches, e.g. the Train storage_path) and `name` locate the
    coordinator's saved states (or `home`, the run's folder itself, with `fence`, its owner's
    generation, checked before every state written); `shards` > 1 spreads the per-sample state over
    that many actors."""

    def __init__(self, policy: str = "repb", policy_args: dict | None = None, *, num_samples: int,
                 num_workers: int, seed: int = 0, shards: int = 1, storage_path: str | None = None,
                 name: str = "run", observe_every: int = 32, timeout_s: float = 600.0, shuffle_rows: int = 4096,
                 chunk: int | None = None, home: str | None = None, fence=None):
        params = dict(policy_args or {})
        policy_class(policy).check(num_samples, seed, max(1, num_workers), **params)  # before any actor starts
        if home is None and storage_path:
            home = storage.join(storage_path, name)
        state_root = storage.join(home, COORDINATOR_DIR) if home else None
        self.coordinator = coordinator.create(policy, num_samples, seed, max(1, num_workers), params,
                                              shards=shards, chunk=chunk, state_root=state_root, fence=fence)
        self.progress = progress.create()
        self.handle = PruningHandle(self.coordinator, seed, num_samples, state_root is not None, observe_every,
                                    timeout_s, shuffle_rows,
                                    None if fence is None else fence.generation, self.progress)

    def dataset(self, ds, task_ref=None):
        """Your train dataset (an int64 `id` column 0..n-1), pruned to each epoch's plan; the rows
        carry `weight` (the CTR weight) and `epoch`."""
        from repb_ray.data.pipeline import pruned_dataset
        return pruned_dataset(ds, self.coordinator, task_ref)

    def data_config(self) -> PlanDataConfig:
        """A ray.train.DataConfig: the train split equal across ranks in a deterministic order; any
        other dataset (evaluation) split without dropping rows."""
        return PlanDataConfig()

    def shutdown(self) -> None:
        ray.kill(self.coordinator)
        ray.kill(self.progress)
