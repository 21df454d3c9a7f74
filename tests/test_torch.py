"""repb_ray.torch: weighted loss, plan sampler, scores, schedule, augmentation, DDP-safe gathering."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repb_ray.core import EpochPlan, make_policy
from repb_ray.torch import IndexedDataset, PlanCosineLR, PlanSampler, compute_scores, gather_observations, weighted_loss
from repb_ray.torch.augment import random_crop_flip


def test_weighted_loss_is_mean_of_w_times_l_and_rejects_reduced_loss():
    l = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, 1.0, 2.0, 4.0])
    assert weighted_loss(l, w).item() == pytest.approx((1 + 2 + 6 + 16) / 4)
    assert weighted_loss(l, w, normalize=True).item() == pytest.approx((1 + 2 + 6 + 16) / 4 / 2)
    with pytest.raises(ValueError, match="already reduced.*reduction='none'"):
        weighted_loss(l.mean(), w)
    with pytest.raises(ValueError, match="shape"):
        weighted_loss(l, w[:3])


def test_plan_sampler_splits_the_plan_into_equal_disjoint_shards():
    plan = EpochPlan(2, np.arange(0, 40, 2, dtype=np.int64), np.ones(20, np.float32))
    shards = [list(PlanSampler(plan, rank=r, world_size=4, seed=3)) for r in range(4)]
    assert all(len(s) == 5 for s in shards)
    assert sorted(sum(shards, [])) == plan.ids.tolist()
    assert shards[0] == list(PlanSampler(plan, rank=0, world_size=4, seed=3))  # same order on every call
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        PlanSampler(plan, world_size=3)


def test_indexed_dataset_yields_ids():
    ds = IndexedDataset(torch.utils.data.TensorDataset(torch.arange(5.0)))
    i, (x,) = ds[3]
    assert i.dtype == torch.int64 and i.item() == 3 and x.item() == 3.0


def test_scores_loss_and_grad_norm():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    s = compute_scores("loss", per, logits, y)
    assert s.dtype == np.float32 and np.allclose(s, per.numpy())
    g = compute_scores("grad_norm", per, logits, y)
    p = torch.softmax(logits, 1)
    assert np.isclose(g[1], np.sqrt(0.5 ** 2 + 0.5 ** 2)) and np.isclose(g[0], np.sqrt(2) * (1 - p[0, 0].item()))
    with pytest.raises(ValueError, match="unknown score"):
        compute_scores("entropy", per, logits, y)


def test_schedule_follows_real_epoch_lengths():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = PlanCosineLR(opt, 1.0, epochs=2)
    sched.start_epoch(2, steps_in_epoch=3)   # a pruned epoch of 3 steps: lr reaches 0 at its end
    for _ in range(3):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    sched.start_epoch(1, 10)
    assert sched.get_last_lr()[0] == pytest.approx(1.0)


def test_random_crop_flip_is_seeded():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    a = random_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)


def _gather_worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    n = 3 + rank  # ranks hold different counts
    ids = np.arange(n, dtype=np.int64) + 2**40 + 10 * rank  # far beyond float32's exact range
    steps, ids, scores = gather_observations(np.full(n, rank, np.int64), ids, np.full(n, 0.5 + rank, np.float32))
    np.savez(os.path.join(out_dir, f"r{rank}.npz"), steps=steps, ids=ids, scores=scores)
    dist.destroy_process_group()


def test_gather_observations_across_two_gloo_ranks(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gather_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (np.load(tmp_path / f"r{r}.npz") for r in (0, 1))
    for k in ("steps", "ids", "scores"):
        np.testing.assert_array_equal(r0[k], r1[k])
    assert r0["ids"].dtype == np.int64 and r0["ids"].tolist() == [2**40 + i for i in (0, 1, 2, 10, 11, 12, 13)]
    assert r0["scores"].tolist() == [0.5] * 3 + [1.5] * 4 and r0["steps"].tolist() == [0] * 3 + [1] * 4


def test_plain_loop_example_runs(tmp_path):
    import subprocess, sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "examples/plain_pytorch.py", "--dataset", "synthetic", "--epochs", "3"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "epoch 3:" in p.stdout and "pruned fraction over 3 epochs" in p.stdout
