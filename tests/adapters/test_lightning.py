"""RePB in PyTorch Lightning: the PruningCallback on a small image classifier: pruning happens, the
plans are those of the core policy fed the same scores, the LR schedule follows the real steps, and 2
processes (torchrun, Lightning's DDP) reach the same plans."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")
import lightning.pytorch as pl  # noqa: E402
from lightning_script import train  # noqa: E402

from repb_ray.core import make_policy  # noqa: E402
from repb_ray.lightning import PruningCallback  # noqa: E402
from repb_ray.torch import RealStepLR  # noqa: E402

pytestmark = [pytest.mark.slow]


class Recording(PruningCallback):
    """PruningCallback that keeps every epoch's observations, to replay them into a plain policy."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.recorded = []

    def _decide(self):
        obs = self.pruner._obs
        self.recorded.append((np.concatenate([np.full(len(i), s, np.int64) for s, i, _ in obs]),
                              np.concatenate([i for _, i, _ in obs]),
                              torch.cat([s for _, _, s in obs]).numpy()))
        super()._decide()


def test_callback_prunes_with_the_core_policys_plans_and_real_step_schedule():
    pruning, model, trainer = train(pruning_cls=Recording)
    kept = [e["kept"] for e in pruning.epochs_log]
    assert kept[0] == 120 and kept[1] < 120 and len(kept) == 3
    p = make_policy("repb", num_samples=120, seed=0, rho=0.6)
    for steps, ids, scores in pruning.recorded:
        assert np.unique(ids).size == ids.size
        p.observe(steps, ids, scores)
        p.finish_epoch()
    assert p.digest() == pruning.pruner.policy.digest()
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, RealStepLR) and sched.nominal == 3 * 8  # 3 epochs x 8 full-data steps


def test_gradient_accumulation_keeps_every_group_a_mean():
    pruning, _, trainer = train(accumulate=2, batch=8)
    assert [e["kept"] for e in pruning.epochs_log][0] == 120 and trainer.global_step >= 8


def test_distributed_sampler_must_be_off():
    import lightning.pytorch as pl
    pruning = PruningCallback("repb", {}, num_samples=8, epochs=1)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[pruning], logger=False)
    assert trainer._accelerator_connector.use_distributed_sampler  # the default; refused only with several ranks


def test_two_processes_reach_the_same_plans(tmp_path):
    from helpers import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                        os.path.join(here, "lightning_script.py"), str(tmp_path)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    results = []
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json") as fh:
            results.append(json.load(fh))
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert results[0]["digest"] == results[1]["digest"] and results[0]["kept"] == results[1]["kept"]
    assert results[0]["kept"][1] < 120


def test_the_example_script_runs():
    from helpers import ROOT
    p = subprocess.run([sys.executable, "examples/lightning_callback.py", "--epochs", "2", "--subset", "600",
                        "--synthetic"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "epoch 2: trained" in p.stdout and "pruned)" in p.stdout


class SaveAtEpochEnd(pl.Callback):
    """A checkpoint written in on_train_epoch_end by a callback listed before PruningCallback (as Ray's
    RayTrainReportCallback can be): it must already hold the next plan."""

    def __init__(self, path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


def test_a_run_resumed_from_its_lightning_checkpoint_trains_every_plan_once_in_order(tmp_path):
    """Checkpointing on, the checkpoint written before PruningCallback's own epoch end: the state is plain types
    and tensors (torch.load(weights_only=True) reads it), and the resumed run trains plan 3 where the
    uninterrupted run did, with the same decisions and the same OneCycleLR position (Lightning restores
    the bare scheduler before PruningCallback wraps it again)."""
    ckpt = str(tmp_path / "epoch2.ckpt")
    whole, _, t_whole = train(epochs=3)
    train(epochs=2, before=(SaveAtEpochEnd(ckpt),))
    state = torch.load(ckpt, weights_only=True)  # nothing but plain types and tensors
    assert state["callbacks"]["PruningCallback"]["policy"]["epoch"] == 3  # the next plan was decided before the save
    resumed, _, t_resumed = train(epochs=3, ckpt_path=ckpt)
    assert [e["epoch"] for e in resumed.epochs_log] == [1, 2, 3]
    assert [e["kept"] for e in resumed.epochs_log] == [e["kept"] for e in whole.epochs_log]
    assert resumed.pruner.policy.digest() == whole.pruner.policy.digest()
    lr = [t.lr_scheduler_configs[0].scheduler.get_last_lr() for t in (t_whole, t_resumed)]
    assert lr[0] == lr[1]


class SaveAtStep(pl.Callback):
    """Saves a checkpoint after global step `step`, as ModelCheckpoint(every_n_train_steps=...) does."""

    def __init__(self, path: str, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_a_run_resumed_within_an_epoch_equals_the_uninterrupted_run(tmp_path):
    """A checkpoint after the 2nd step of the pruned epoch 2: the resumed run trains the rest of that epoch
    (its loader starts after the 2 batches, the scores before the checkpoint kept) and ends with the same
    decisions, schedule position and weights, bit for bit, as the run never stopped."""
    ckpt = str(tmp_path / "step10.ckpt")
    whole, m_whole, t_whole = train(epochs=3)
    train(epochs=3, before=(SaveAtStep(ckpt, 10),))
    state = torch.load(ckpt, weights_only=True)["callbacks"]["PruningCallback"]["policy"]
    assert state["epoch"] == 2 and state["within_epoch"]["batches"] == 2
    resumed, m_resumed, t_resumed = train(epochs=3, ckpt_path=ckpt)
    assert [e["kept"] for e in resumed.epochs_log] == [e["kept"] for e in whole.epochs_log]
    assert resumed.pruner.policy.digest() == whole.pruner.policy.digest() and t_resumed.global_step == t_whole.global_step
    assert torch.equal(torch.nn.utils.parameters_to_vector(m_resumed.parameters()),
                       torch.nn.utils.parameters_to_vector(m_whole.parameters()))
