"""repb_ray.torch: weighted loss, plan sampler, scores, schedule, augmentation, DDP-safe gathering."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from repb_ray.core import EpochPlan
from repb_ray.torch import IndexedDataset, PlanCosineLR, PlanSampler, Scorer, gather_observations, weighted_loss
from repb_ray.torch.scores import grad_norm_of_logits

pytestmark = pytest.mark.unit  # in-process, seconds


def test_weighted_loss_is_mean_of_w_times_l_and_rejects_reduced_loss():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, 1.0, 2.0, 4.0])
    assert weighted_loss(losses, w).item() == pytest.approx((1 + 2 + 6 + 16) / 4)
    assert weighted_loss(losses, w, normalize=True).item() == pytest.approx((1 + 2 + 6 + 16) / 4 / 2)
    with pytest.raises(ValueError, match="already reduced.*reduction='none'"):
        weighted_loss(losses.mean(), w)
    with pytest.raises(ValueError, match="shape"):
        weighted_loss(losses, w[:3])


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


def test_scores_loss_and_grad_norm_at_the_model_output():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    loss_score, grad_score = Scorer("loss", model), Scorer("grad_norm", model)
    logits = model(x)
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    assert torch.equal(loss_score(per), per.detach())
    g = grad_score(per)  # generic: d sum(loss) / d output, per sample
    np.testing.assert_allclose(g.numpy(), grad_norm_of_logits(logits, y), rtol=1e-6)
    per.mean().backward()  # the parameters' backward still works after the output gradient
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="score must be one of loss, grad_norm, last_layer_grad_norm"):
        Scorer("entropy")


def _per_sample_grad_norms(model, layer, loss_of, *inputs):
    """The reference: each sample's gradient of its own loss w.r.t. `layer`'s parameters, one
    backward per sample (torch.func.vmap(grad) would do the same)."""
    out = []
    for i in range(inputs[0].shape[0]):
        model.zero_grad()
        loss_of(*(t[i:i + 1] for t in inputs)).sum().backward()
        out.append(torch.cat([p.grad.flatten() for p in layer.parameters()]).norm())
    return torch.stack(out)


@pytest.mark.parametrize("shape", ["vector", "sequence"])
def test_last_layer_grad_norm_is_each_samples_exact_gradient_norm_of_the_last_linear(shape):
    torch.manual_seed(0)
    if shape == "vector":
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])

        def loss_of(xb, yb):
            return torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
    else:   # a token model: the last layer sees [B, T, d]; one loss per sample, summed over its tokens
        model = torch.nn.Sequential(torch.nn.Embedding(7, 6), torch.nn.Linear(6, 7))
        x, y = torch.randint(0, 7, (4, 5)), torch.randint(0, 7, (4, 5))

        def loss_of(xb, yb):
            logits = model(xb)
            return torch.nn.functional.cross_entropy(logits.transpose(1, 2), yb, reduction="none").sum(1)
    scorer = Scorer("last_layer_grad_norm", model)
    got = scorer(loss_of(x, y))
    want = _per_sample_grad_norms(model, model[-1], loss_of, x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert scorer.layer is model[-1]


def test_last_layer_grad_norm_needs_a_linear_layer():
    from repb_ray.task import TaskError
    with pytest.raises(TaskError, match="task 'my:Task': score=last_layer_grad_norm needs an nn.Linear in the model"):
        Scorer("last_layer_grad_norm", torch.nn.Conv2d(1, 1, 1), task="my:Task")


def test_grad_norm_needs_one_output_tensor():
    from repb_ray.task import TaskError

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return x, x
    m = TwoHeads()
    s = Scorer("grad_norm", m, task="my:Task")
    m(torch.zeros(2, requires_grad=True))
    with pytest.raises(TaskError, match="task 'my:Task': score=grad_norm needs the model's forward to return one tensor"):
        s(torch.zeros(2, requires_grad=True))


def test_schedule_follows_real_epoch_lengths():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = PlanCosineLR(opt, 1.0, epochs=2)
    sched.start_epoch(2, steps_in_epoch=3)   # a pruned epoch of 3 steps: lr reaches 0 at its end
    for _ in range(3):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    sched.start_epoch(1, 10)
    assert sched.get_last_lr()[0] == pytest.approx(1.0)


def _gather_worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    n = 3 + rank  # ranks hold different counts
    ids = np.arange(n, dtype=np.int64) + 2**40 + 10 * rank  # far beyond float32's exact range
    steps, ids, scores = gather_observations(np.full(n, rank, np.int64), ids, np.full(n, 0.5 + rank, np.float32))
    np.savez(os.path.join(out_dir, f"r{rank}.npz"), steps=steps, ids=ids, scores=scores)
    dist.destroy_process_group()


def _two_ranks(worker, out_dir) -> None:
    """`worker(rank, port, out_dir)` in two processes of one gloo group on a free 127.0.0.1 port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, str(out_dir)), nprocs=2, start_method="spawn")


@pytest.mark.slow  # two processes
def test_gather_observations_across_two_gloo_ranks(tmp_path):
    _two_ranks(_gather_worker, tmp_path)
    r0, r1 = (np.load(tmp_path / f"r{r}.npz") for r in (0, 1))
    for k in ("steps", "ids", "scores"):
        np.testing.assert_array_equal(r0[k], r1[k])
    assert r0["ids"].dtype == np.int64 and r0["ids"].tolist() == [2**40 + i for i in (0, 1, 2, 10, 11, 12, 13)]
    assert r0["scores"].tolist() == [0.5] * 3 + [1.5] * 4 and r0["steps"].tolist() == [0] * 3 + [1] * 4


@pytest.mark.slow  # the example in its own process
def test_plain_loop_example_runs(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT as root
    p = subprocess.run([sys.executable, "examples/plain_pytorch.py", "--task", "synthetic", "--epochs", "3"],
                       cwd=root, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "epoch 3:" in p.stdout and "pruned fraction over 3 epochs" in p.stdout


def test_builtin_resnet18_takes_the_task_input_channels():
    from repb_ray.tasks.models import build_model
    for shape in [(1, 28, 28), (3, 32, 32)]:
        out = build_model("resnet18", shape, 10).eval()(torch.zeros(2, *shape))
        assert tuple(out.shape) == (2, 10)


def test_any_scheduler_follows_real_steps_when_epochs_get_shorter():
    """OneCycleLR built for 3 epochs of 10 steps: with pruned epochs of 10, 4 and 5 real steps, the
    learning rate at each epoch's end is the unpruned schedule's, and the schedule ends where it should."""
    from repb_ray.torch import RealStepLR

    def build():
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=31)
    ref_opt, ref = build()
    at_end = []
    for _ in range(3):
        for _ in range(10):
            ref_opt.step()
            ref.step()
        at_end.append(ref.get_last_lr()[0])
    opt, sched = build()
    wrapped = RealStepLR(sched, steps_per_epoch=10)
    lrs = []
    for epoch, real in ((1, 10), (2, 4), (3, 5)):
        wrapped.start_epoch(epoch, real)
        for _ in range(real):
            opt.step()
            wrapped.step()
            lrs.append(wrapped.get_last_lr()[0])
        assert wrapped.get_last_lr()[0] == pytest.approx(at_end[epoch - 1])
    assert sched.last_epoch == 30 and lrs == sorted(lrs[:lrs.index(max(lrs)) + 1]) + lrs[lrs.index(max(lrs)) + 1:]
    state = wrapped.state_dict()
    _, sched2 = build()
    again = RealStepLR(sched2, steps_per_epoch=10)
    again.load_state_dict(state)
    assert again.get_last_lr() == wrapped.get_last_lr() and again.nominal == wrapped.nominal


def test_total_steps_of_a_budget():
    from repb_ray.core import total_steps
    assert total_steps(1000, 4, 100) == 40
    assert total_steps(1000, 4, 100, world_size=2) == 20
    assert total_steps(1000, 4, 100, grad_accum_steps=3) == 16                # 10 batches -> 4 steps per epoch
    # 50% of 4000 sample-steps: epoch 1 full (1000), the other 1000 spread over 3 epochs (334 each)
    assert total_steps(1000, 4, 100, target_pruned=0.5) == 10 + 3 * 4
    assert total_steps(1000, 4, 100, target_pruned=0.5, first_epoch_full=False) == 4 * 5


def test_label_noise_flips_a_seeded_fraction_of_training_labels_only():
    import numpy as np

    from repb_ray.tasks.synthetic import Synthetic
    task = Synthetic(size=4000, num_classes=4, label_noise=0.3, noise_seed=5)
    ids = np.arange(4000, dtype=np.int64)
    x, y = task.arrays("train")
    batch = task.preprocess({"id": ids, "x": x, "y": y, "epoch": np.ones(4000, np.int64)})
    flipped = batch["y"] != y
    assert abs(flipped.mean() - 0.3) < 0.03 and (batch["y"][flipped] != y[flipped]).all()   # to another class
    again = task.preprocess({"id": ids[::-1].copy(), "x": x[::-1], "y": y[::-1], "epoch": np.ones(4000, np.int64)})
    assert np.array_equal(again["y"][::-1], batch["y"])                                      # a function of the id
    assert task.summary_info(4000)["labels_flipped"] == int(flipped.sum())
    assert np.array_equal(task.eval_preprocess({"id": ids, "x": x, "y": y})["y"], y)          # the test set: never
    assert not np.array_equal(Synthetic(size=4000, label_noise=0.3, noise_seed=6).noisy_labels(ids, y), batch["y"])
    assert Synthetic(size=10).summary_info(10) == {}


def _step_setup(precision="fp32", grad_clip=None, score="loss"):
    from repb_ray.tasks.synthetic import Synthetic
    from repb_ray.torch.scores import Scorer
    from repb_ray.torch.step import TrainStep
    task = Synthetic(size=64, dim=8)
    torch.manual_seed(0)
    model = task.model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return task, model, TrainStep(task, "synthetic", model, opt, Scorer(score, model), precision=precision,
                                  grad_clip=grad_clip)


def test_the_training_step_scores_by_the_last_layers_per_sample_gradient_norm_before_its_update():
    task, model, step = _step_setup(score="last_layer_grad_norm")
    b = _batch(task, 0, 16)
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    want = _per_sample_grad_norms(model, last, lambda x, y: task.loss(model, {"x": x, "y": y}), b["x"], b["y"])
    model.zero_grad()
    _, scores = step.batch(b)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-6)


def _batch(task, lo, hi):
    import numpy as np
    x, y = task.arrays("train")
    w = np.linspace(0.5, 2.0, 64).astype(np.float32)
    return {"x": torch.from_numpy(x[lo:hi]), "y": torch.from_numpy(y[lo:hi]), "id": torch.arange(lo, hi),
            "weight": torch.from_numpy(w[lo:hi])}


def test_two_accumulated_batches_step_as_one_of_twice_the_size():
    task, whole, one = _step_setup()
    loss_whole, scores_whole = one.batch(_batch(task, 0, 32))
    one.step()
    task, split, two = _step_setup()
    l1, s1 = two.batch(_batch(task, 0, 16), group_size=32)
    l2, s2 = two.batch(_batch(task, 16, 32), group_size=32)
    two.step()
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose((l1 + l2) / 2, loss_whole, atol=1e-6)          # the same weighted mean
    assert torch.allclose(torch.cat([s1, s2]), scores_whole, atol=1e-6)   # the same pre-update scores


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_keep_scores_and_weights_in_fp32(precision):
    task, model, step = _step_setup(precision, grad_clip=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    loss, scores = step.batch(_batch(task, 0, 32))
    step.step()
    assert scores.dtype == torch.float32 and loss.dtype == torch.float32 and torch.isfinite(scores).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (step.scaler is not None) == (precision == "fp16") and step.state_dict().keys() <= {"scaler"}


def test_compiled_model_steps_where_the_machine_can():
    task, model, _ = _step_setup()
    from repb_ray.torch.scores import Scorer
    from repb_ray.torch.step import TrainStep
    try:
        compiled = torch.compile(model)
        step = TrainStep(task, "synthetic", compiled, torch.optim.SGD(model.parameters(), lr=0.1), Scorer("loss"))
        loss, _ = step.batch(_batch(task, 0, 32))
    except Exception as exc:  # no working C++ toolchain for inductor here
        pytest.skip(f"torch.compile cannot run on this machine: {type(exc).__name__}")
    step.step()
    assert torch.isfinite(loss)


def _late_group_worker(rank, port, out_dir):
    """A pruner made (and asked for its steps) before the process group starts, as a script that builds
    it before the Trainer does: once the group is known, it is rank `rank` of 2."""
    from repb_ray.torch.pruner import LocalPruner
    early = LocalPruner("repb", {}, num_samples=40, epochs=2)
    before = early.steps_in_epoch(4)          # world size 1 still: 10 steps
    served = LocalPruner("repb", {}, num_samples=40, epochs=2)
    served.rank_batches(4)                    # a plan served as rank 0 of 1
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    out = {"before": before, "after": early.steps_in_epoch(4), "rank": early.rank, "world": early.world_size,
           "ids": np.concatenate(early.rank_batches(4)).tolist()}
    try:
        served.rank_batches(4)
    except RuntimeError as exc:
        out["served"] = str(exc)
    np.save(os.path.join(out_dir, f"late{rank}.npy"), np.array(json.dumps(out)))
    dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_a_pruner_made_before_the_process_group_takes_its_rank_once_the_group_is_known(tmp_path):
    _two_ranks(_late_group_worker, tmp_path)
    r = [json.loads(str(np.load(tmp_path / f"late{k}.npy"))) for k in (0, 1)]
    assert [x["before"] for x in r] == [10, 10] and [x["after"] for x in r] == [5, 5]
    assert [(x["rank"], x["world"]) for x in r] == [(0, 2), (1, 2)]
    assert not set(r[0]["ids"]) & set(r[1]["ids"]) and len(r[0]["ids"] + r[1]["ids"]) == 40  # disjoint shares
    assert all("served its plan as rank 0 of 1, and the process group now says rank" in x["served"] for x in r)


def test_epoch_steps_resume_at_the_end_of_an_optimizer_step():
    from repb_ray.core.plan import EpochInfo
    from repb_ray.torch.epoch import EpochSteps
    info = EpochInfo(epoch=2, kept=80, num_samples=100, world_size=2, plan_sizes=(100, 80))
    steps = EpochSteps(info, batch_size=8, grad_accum_steps=2)  # 40 per rank: 5 batches, 3 steps
    steps.seek(2)
    assert steps.step == 1 and steps.group_size == 16 and not steps.done
    for bad in (1, 5, -2):
        with pytest.raises(ValueError, match=f"cannot resume after batch {bad} of an epoch of 5 batches in steps of 2"):
            steps.seek(bad)


def test_a_pruner_saved_within_an_epoch_continues_there_on_the_same_ranks_only():
    """A state saved after 2 of this rank's 8 batches holds the position and the scores so far: loaded, the
    loader serves the last 2 batches, and the epoch's decision equals the one never interrupted. Loaded
    as another rank of the world it refuses with one line; with scores pending, a position is required."""
    from repb_ray.torch.pruner import LocalPruner, RankBatchSampler

    def pruner(rank=0, world=1):
        return LocalPruner("repb", {"rho": 0.6, "window": 2}, num_samples=64, epochs=3, rank=rank, world_size=world)

    def feed(p, batches):
        for step, b in enumerate(batches):
            p.observe(b, torch.from_numpy(((b * 37) % 11).astype(np.float32)), step)

    whole, cut = pruner(), pruner()
    for p in (whole, cut):
        p.begin_epoch(1)
    batches = whole.rank_batches(8)
    feed(whole, batches)
    feed(cut, batches[:2])
    with pytest.raises(RuntimeError, match="needs batches_done="):
        cut.state_dict()
    state = cut.state_dict(batches_done=2)
    resumed = pruner()
    resumed.load_state_dict(state)
    assert resumed.batches_done == 2
    resumed.begin_epoch(1)
    rest = [np.asarray(b) for b in RankBatchSampler(resumed, 8)]
    assert len(rest) == 6 and all(np.array_equal(a, b) for a, b in zip(rest, batches[2:]))
    for step, b in enumerate(rest, start=2):
        resumed.observe(b, torch.from_numpy(((b * 37) % 11).astype(np.float32)), step)
    whole.end_epoch()
    resumed.end_epoch()
    assert resumed.policy.digest() == whole.policy.digest() and resumed.batches_done == 0
    with pytest.raises(ValueError, match="saved within epoch 1 by rank 0 of 1, and this process is rank 1 of 2"):
        pruner(rank=1, world=2).load_state_dict(state)


def test_a_drawn_training_subset_is_the_seeds_own_and_renumbers_the_ids():
    import numpy as np

    from repb_ray.errors import TaskError
    from repb_ray.tasks.classification import check_subset_seed, train_rows
    from repb_ray.tasks.fashion_mnist import FashionMNIST
    assert train_rows(100, None, None) == slice(None) and train_rows(100, 10, None) == slice(0, 10)
    a, b = train_rows(60000, 4000, 0), train_rows(60000, 4000, 1)
    assert len(np.unique(a)) == 4000 and np.all(np.diff(a) > 0) and a.max() > 4000     # drawn from all, in order
    assert np.array_equal(a, train_rows(60000, 4000, 0)) and len(np.intersect1d(a, b)) < 600   # another seed, others
    with pytest.raises(TaskError, match="subset_seed=2 draws train_subset images .* set task_args.train_subset"):
        check_subset_seed(2, None)
    with pytest.raises(TaskError, match="subset_seed must be an integer >= 0 or null, got subset_seed=-1"):
        check_subset_seed(-1, 10)
    with pytest.raises(TaskError, match="train_subset=200 with subset_seed draws from 100 images"):
        train_rows(100, 200, 0)
    with pytest.raises(TaskError, match="set task_args.train_subset too"):
        FashionMNIST(subset_seed=1)
    assert FashionMNIST(train_subset=10, subset_seed=4).summary_info(10) == {"subset_seed": 4}
