"""RePB in a Hugging Face Trainer: a tiny BERT classifier and a tiny GPT-2 LM (from configs, no hub):
pruning happens, the plans are those of the core policy fed the same scores, gradient accumulation 2
trains exactly as batch x2, and 2 DDP processes reach the same plans."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from hf_fixtures import Classification, LanguageModelling, args, bert, gpt2  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from repb_ray.core import make_policy  # noqa: E402
from repb_ray.hf import LocalPruner, PruningTrainer  # noqa: E402

pytestmark = [pytest.mark.slow]


class Recording(LocalPruner):
    """A LocalPruner that keeps every epoch's observations, to replay them into a plain policy."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.epochs = []

    def end_epoch(self):
        steps = np.concatenate([np.full(len(i), s, np.int64) for s, i, _ in self._obs])
        ids = np.concatenate([i for _, i, _ in self._obs])
        scores = torch.cat([s for _, _, s in self._obs]).numpy()
        self.epochs.append((steps, ids, scores))
        return super().end_epoch()


def _replay(recorded, n, **params):
    p = make_policy("repb", num_samples=n, seed=0, **params)
    digests = [p.plan.digest]
    for steps, ids, scores in recorded:
        p.observe(steps, ids, scores)
        digests.append(p.finish_epoch().digest)
    return digests, p


@pytest.mark.parametrize("model,data,loss", [(bert, Classification, "auto"), (gpt2, LanguageModelling, "causal_lm")],
                         ids=["bert-classifier", "gpt2-lm"])
def test_trainer_prunes_with_the_core_policys_plans(tmp_path, model, data, loss):
    n = 96
    pruner = Recording("repb", {"rho": 0.6, "window": 2}, num_samples=n, epochs=3)
    trainer = PruningTrainer(model=model(), args=args(str(tmp_path)), train_dataset=data(n), pruning=pruner,
                             per_sample_loss=loss)
    trainer.train()
    kept = [e["kept"] for e in trainer.epochs_log]
    assert kept[0] == n and kept[1] < n and len(kept) == 3       # epoch 1 full, then pruning
    digests, ref = _replay(pruner.epochs, n, rho=0.6, window=2)
    assert pruner.policy.digest() == digests[-1] and len(pruner.epochs) == 3
    for (steps, ids, _), k in zip(pruner.epochs, kept):
        assert np.unique(ids).size == ids.size == k                # every plan sample once
        assert steps.max() == -(-k // 16) - 1                      # one step per batch
    assert np.array_equal(ref.plan.weights, pruner.plan.weights)


def test_gradient_accumulation_2_trains_as_batch_x2(tmp_path):
    """40 samples: batches of 8 accumulated by 2 give optimizer steps of 16, 16, 8 (the last one partial,
    stepped at the epoch's end), the same steps batch 16 takes: the same weights after 2 epochs."""
    n, out = 40, []
    for batch, accum in ((8, 2), (16, 1)):
        pruner = LocalPruner("repb", {"rho": 0.5}, num_samples=n, epochs=2)
        t = PruningTrainer(model=bert(), args=args(str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
                                                   gradient_accumulation_steps=accum, num_train_epochs=2,
                                                   lr_scheduler_type="constant"),
                           train_dataset=Classification(n), pruning=pruner)
        t.train()
        out.append((torch.nn.utils.parameters_to_vector(t.model.parameters()).detach(), pruner.policy.digest(),
                    t.state.global_step))
    (a, da, sa), (b, db, sb) = out
    assert sa == sb
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4) and da == db


def test_bad_arguments_are_one_line(tmp_path):
    pruner = LocalPruner("repb", {}, num_samples=8, epochs=1)
    with pytest.raises(ValueError, match="per_sample_loss must be one of"):
        PruningTrainer(model=bert(), args=args(str(tmp_path)), train_dataset=Classification(8), pruning=pruner,
                       per_sample_loss="mse")
    with pytest.raises(ValueError, match="dataloader_drop_last=True would leave plan samples untrained"):
        PruningTrainer(model=bert(), args=args(str(tmp_path), dataloader_drop_last=True),
                       train_dataset=Classification(8), pruning=pruner)


class FailAt(TrainerCallback):
    """A preemption: the process stops after optimizer step `step` (before that step's checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError(f"preempted after step {self.step}")


def _run(out, fail_at=None, resume=None, **kw):
    """96 samples in batches of 16, 3 epochs (6 steps in epoch 1, fewer after), dropout on; returns the
    weights, the policy's digest, the epochs' kept sizes and the Trainer's steps."""
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64,
                                                     max_position_embeddings=32, num_labels=2))
    pruner = LocalPruner("repb", {"rho": 0.6, "window": 2}, num_samples=96, epochs=3)
    t = PruningTrainer(model=model, args=args(str(out), **kw), train_dataset=Classification(96), pruning=pruner,
                       callbacks=[FailAt(fail_at)] if fail_at else None)
    if fail_at:
        with pytest.raises(RuntimeError, match="preempted"):
            t.train()
        return None
    t.train(resume_from_checkpoint=resume)
    return (torch.nn.utils.parameters_to_vector(t.model.parameters()).detach(), pruner.policy.digest(),
            [e["kept"] for e in t.epochs_log], t.state.global_step)


@pytest.mark.parametrize("strategy,fail_at,resumed_from", [("steps", 9, "checkpoint-8"), ("steps", 7, "checkpoint-6"),
                                                           ("epoch", 9, "checkpoint-6")],
                         ids=["within-epoch-2", "at-epoch-1-end", "save_strategy-epoch"])
def test_a_run_resumed_from_a_trainer_checkpoint_equals_the_uninterrupted_run(tmp_path, strategy, fail_at,
                                                                             resumed_from):
    """Killed after a step, continued from the Trainer's last checkpoint: the same weights (dropout on, so the
    RNG state matters too), the same plans and steps, bit for bit, as the run that was never stopped.
    Epoch 2 is pruned (5 steps), so the Trainer's own full-data reckoning would resume elsewhere."""
    save = dict(save_strategy=strategy, save_steps=2)
    whole = _run(tmp_path / "whole", **save)
    _run(tmp_path / "cut", fail_at=fail_at, **save)
    assert os.path.basename(get_last_checkpoint(str(tmp_path / "cut"))) == resumed_from
    resumed = _run(tmp_path / "cut", resume=True, **save)
    assert whole[2][1] < 96 and resumed[1:] == whole[1:]
    assert torch.equal(resumed[0], whole[0])


def test_resume_needs_the_pruning_state(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    pruner = LocalPruner("repb", {}, num_samples=8, epochs=1)
    t = PruningTrainer(model=bert(), args=args(str(tmp_path)), train_dataset=Classification(8), pruning=pruner)
    with pytest.raises(ValueError, match="has no pruning state"):
        t.train(resume_from_checkpoint=str(folder))


DDP = r"""
import os, sys, json
sys.path.insert(0, sys.argv[2])
import numpy as np
from hf_fixtures import Classification, args, bert
from repb_ray.hf import LocalPruner, PruningTrainer
pruner = LocalPruner("repb", {"rho": 0.6}, num_samples=100, epochs=3)
seen = []
class Seeing(PruningTrainer):
    def _observe(self, step, ids, per_sample):
        seen.append(np.asarray(ids).tolist())
        super()._observe(step, ids, per_sample)
t = Seeing(model=bert(), args=args(sys.argv[1], per_device_train_batch_size=8), train_dataset=Classification(100),
           pruning=pruner)
t.train()
print(json.dumps({"rank": int(os.environ["RANK"]), "digest": pruner.policy.digest(),
                  "ids": sorted(sum(seen, [])), "kept": [e["kept"] for e in t.epochs_log]}))
from repb_ray.torch import end_process_group
end_process_group()
"""


def test_two_ddp_processes_reach_the_same_plans(tmp_path):
    from helpers import ROOT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = os.path.dirname(os.path.abspath(__file__))
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", DDP, str(tmp_path / f"r{rank}"), here], env=env,
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    import json
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    r0, r1 = sorted(results, key=lambda r: r["rank"])
    assert r0["digest"] == r1["digest"] and r0["kept"] == r1["kept"] and r0["kept"][1] < 100
    assert len(r0["ids"]) == len(r1["ids"]) == sum(r0["kept"]) // 2


def test_the_example_script_runs():
    from helpers import ROOT
    p = subprocess.run([sys.executable, "examples/hf_trainer.py", "--epochs", "2", "--samples", "300",
                        "--out", "/tmp/repb_hf_example_test"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "epoch 2: trained" in p.stdout and "pruned fraction over 2 epochs" in p.stdout
