"""PlanDataConfig: how Ray Train splits a pruned run's datasets across its workers. Runs in the driver
and in Train's dataset manager."""

from __future__ import annotations

import ray.train
from ray.data import ExecutionOptions

from repb_ray import _ray_compat


class PlanDataConfig(ray.train.DataConfig):
    """Train: streaming_split(equal=True) with preserve_order (ranks get equal, disjoint, deterministic
    shares: the plan's size is a multiple of the world size). Others: equal=False, every row once."""

    def __init__(self):
        super().__init__(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = _ray_compat.data_config_execution_options(self, name)
            for i, split in enumerate(ds.streaming_split(world_size, equal=name == "train")):
                output[i][name] = split
        return output
