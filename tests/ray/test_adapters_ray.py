"""The adapters inside Ray Train: the Hugging Face Trainer with Ray's own HF integration (2 workers, the
run's shared coordinator and pruned Ray Data epochs; the plans are the core policy's for the same scores)
and the Lightning callback with Ray's Lightning integration (2 workers reach the same plans)."""

import importlib
import json
import os
import sys

import numpy as np
import pytest

from repb_ray.core import make_policy  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "adapters")


def adapters_module(name: str):
    """A helper module of tests/adapters (imported with that folder on the path for the import only)."""
    sys.path.insert(0, HERE)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(HERE)


def test_hf_trainer_on_two_ray_workers_with_the_coordinator(ray_session, tmp_path):
    pytest.importorskip("transformers")
    import ray.train
    from ray.train.torch import TorchTrainer
    token_data = adapters_module("hf_fixtures").token_data
    loop = adapters_module("hf_ray_loop").loop
    from repb_ray.data import from_numpy
    from repb_ray.train import Pruning
    n = 96
    ids, mask, labels = token_data(n)
    pruning = Pruning("repb", {"rho": 0.6, "window": 1}, num_samples=n, num_workers=2, shuffle_rows=0)
    try:
        result = TorchTrainer(
            loop, train_loop_config={"pruning": pruning.handle, "out": str(tmp_path)},
            datasets={"train": pruning.dataset(from_numpy({"input_ids": ids, "attention_mask": mask, "labels": labels},
                                                          block_rows=16))},
            dataset_config=pruning.data_config(),
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=ray.train.RunConfig(name="hf-ray", storage_path=str(tmp_path)),
        ).fit()
    finally:
        pruning.shutdown()
    out = result.return_value
    assert out["kept"][0] == n and out["kept"][1] < n
    # the coordinator's plans are those of a plain policy fed both ranks' scores
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    p = make_policy("repb", num_samples=n, seed=0, world_size=2, rho=0.6, window=1)
    for epoch, k in zip((1, 2, 3), out["kept"]):
        parts = [(r["step"][r["epoch"] == epoch], r["ids"][r["epoch"] == epoch], r["scores"][r["epoch"] == epoch])
                 for r in ranks]
        assert [x[1].size for x in parts] == [k // 2, k // 2]                 # equal, disjoint halves
        assert not np.intersect1d(parts[0][1], parts[1][1]).size
        for steps, ids, scores in parts:
            p.observe(steps.astype(np.int64), ids.astype(np.int64), scores.astype(np.float32))
        p.finish_epoch()
    assert p.plan.digest == out["digest"]


def test_lightning_callback_on_two_ray_workers(ray_session, tmp_path):
    pytest.importorskip("lightning")
    import ray.train
    from ray.train.torch import TorchTrainer
    ray_loop = adapters_module("lightning_script").ray_loop
    TorchTrainer(ray_loop, train_loop_config={"out": str(tmp_path)},
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                 run_config=ray.train.RunConfig(name="lightning-ray", storage_path=str(tmp_path))).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["digest"] == ranks[1]["digest"] and ranks[0]["kept"] == ranks[1]["kept"]  # the same plans
    assert ranks[0]["kept"][0] == 120 and ranks[0]["kept"][1] < 120                             # pruning happened


def test_lightning_callback_resumed_by_ray_from_its_checkpoint_trains_every_plan_once(ray_session, tmp_path):
    """Ray's RayTrainReportCallback checkpoints each epoch (ahead of PruningCallback), a worker fails at epoch 3,
    the restarted workers resume from epoch 2's checkpoint: the same plans as the run that did not fail."""
    pytest.importorskip("lightning")
    import ray.train
    from ray.train.torch import TorchTrainer
    ray_loop = adapters_module("lightning_script").ray_loop
    outs = {}
    for name, extra, failures in (("clean", {}, 0), ("failed", {"fail_at_epoch": 3}, 1)):
        out = tmp_path / name
        out.mkdir()
        TorchTrainer(ray_loop, train_loop_config={"out": str(out), **extra},
                     scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                     run_config=ray.train.RunConfig(name=f"lightning-{name}", storage_path=str(tmp_path / "store"),
                                                    failure_config=ray.train.FailureConfig(max_failures=failures))
                     ).fit()
        outs[name] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert (tmp_path / "failed" / "failed").exists()  # it did fail once
    for r in (0, 1):
        assert outs["failed"][r]["digest"] == outs["clean"][r]["digest"]
        assert outs["failed"][r]["kept"] == outs["clean"][r]["kept"] and outs["failed"][r]["epochs"] == [1, 2, 3]
