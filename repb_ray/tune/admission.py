"""How many trials of a sweep run at once, and in which order they start: the Admission searcher hands
out the sweep's trials by their place in it, as the cluster's resources allow (re-read each time Tune
asks, so an autoscaling cluster takes more as nodes join). Its state is a small JSON file, so an
interrupted sweep resumes where it stopped. Runs in the sweep's driver."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ray.tune.search import Searcher

from repb_ray.config import Config


@dataclass(frozen=True)
class TrialDemand:
    """What one trial's Train workers hold (no paths, no credentials: Tune pickles its searcher)."""

    world_size: int
    cpus_per_worker: float
    use_gpu: bool
    worker_resources: tuple

    @classmethod
    def of(cls, cfg: Config) -> TrialDemand:
        return cls(cfg.world_size, cfg.cpus_per_worker, cfg.use_gpu, tuple(sorted(cfg.worker_resources.items())))


def capacity(demand: TrialDemand, cluster: dict) -> tuple[int, str]:
    """How many trials the cluster's resources hold now: each needs its workers' CPUs (and GPUs),
    one CPU stays free for Ray Data; at least one (its pending workers make an autoscaler add nodes)."""
    cpus = float(cluster.get("CPU", 0))
    per_trial = demand.world_size * demand.cpus_per_worker
    limits = [math.floor((cpus - 1) / per_trial) if cpus - 1 >= per_trial else 0]
    if demand.use_gpu:
        limits.append(math.floor(cluster.get("GPU", 0) / demand.world_size))
    for name, amount in demand.worker_resources:  # e.g. the nodes that may hold Train workers
        if amount > 0:
            limits.append(math.floor(cluster.get(name, 0) / (demand.world_size * amount)))
    n = max(1, min(limits))
    gpus = f", {cluster.get('GPU', 0):g} GPUs" if demand.use_gpu else ""
    why = (f"{n} trial(s) at once: each holds {demand.world_size} workers x {demand.cpus_per_worker:g} CPU"
           f"{' + 1 GPU' if demand.use_gpu else ''}; the cluster has {cpus:g} CPUs{gpus} now, one kept for Ray Data")
    return n, why


class Admission(Searcher):
    """Hands out trials[0], trials[1], ... as {"trial": overrides, "index": i}, while the running ones
    fit the cluster (or `cap`)."""

    def __init__(self, trials: list[dict], demand: TrialDemand, cap: int | None = None, log=print):
        super().__init__()
        self.trials, self.demand, self.cap, self.log = trials, demand, cap, log
        self.next, self.running, self.last_why = 0, set(), None

    def suggest(self, trial_id: str):
        import ray
        if self.next >= len(self.trials):
            return Searcher.FINISHED
        if self.cap is not None:
            limit, why = self.cap, f"{self.cap} trial(s) at once, as configured"
        else:
            limit, why = capacity(self.demand, ray.cluster_resources())
        if why != self.last_why:
            self.last_why = why
            self.log(why)
        if len(self.running) >= limit:
            return None  # asked again later: trials start as resources appear
        self.running.add(trial_id)
        self.next += 1
        return {"trial": self.trials[self.next - 1], "index": self.next - 1}

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        self.running.discard(trial_id)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as fh:
            json.dump({"next": self.next, "running": sorted(self.running)}, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as fh:
            state = json.load(fh)
        self.next, self.running = int(state["next"]), set(state["running"])
