"""repb_ray.torch.evaluation: async evaluation sees the weights of the epoch it was started for."""

import pytest
import torch

from repb_ray.torch.evaluation import Evaluator

pytestmark = pytest.mark.unit  # in-process, seconds


class _Task:
    metric, mode = "accuracy", "max"

    def metrics(self, model, batch):
        logits = model(batch["x"])
        return {"correct": (logits.argmax(1) == batch["y"]).sum(), "loss_sum": torch.nn.functional.cross_entropy(
            logits, batch["y"], reduction="sum"), "count": batch["y"].shape[0]}

    def summarize(self, sums):
        return {"accuracy": sums["correct"] / sums["count"], "loss": sums["loss_sum"] / sums["count"]}


def _batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    return [{"x": x[a:a + 16], "y": y[a:a + 16]} for a in range(0, 64, 16)]


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(8, 3)


def test_async_evaluation_sees_the_weights_it_was_started_with():
    batches = _batches()
    model = _model(1)
    sync = Evaluator(_Task(), lambda: batches, "cpu", mode="sync")
    sync.start(1, model)
    expected = sync.result()
    ev = Evaluator(_Task(), lambda: batches, "cpu", mode="async")
    ev.start(1, model)
    with torch.no_grad():  # the next epoch trains on: the evaluation must not see it
        for p in model.parameters():
            p.add_(10.0)
    assert ev.pending == 1
    assert ev.result() == expected and ev.pending is None
    ev.start(2, model)     # the copy takes the new weights
    sync.start(2, model)
    assert ev.result() == sync.result()


def test_a_failed_evaluation_raises_on_the_training_thread_with_its_epoch():
    def broken():
        raise OSError("test shard gone")
        yield
    ev = Evaluator(_Task(), broken, "cpu", mode="async")
    ev.start(3, _model(0))
    with pytest.raises(RuntimeError, match="evaluation of epoch 3 failed: test shard gone"):
        ev.result()


def test_eval_mode_is_checked():
    with pytest.raises(ValueError, match="eval_mode must be one of auto, async, sync, got eval_mode=.later."):
        Evaluator(_Task(), list, "cpu", mode="later")


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_the_test_batches_are_read_once_when_they_fit_the_cache(mode):
    batches = _batches()
    reads = []

    def read():
        reads.append(1)
        return iter(batches)
    model = _model(2)
    fits = Evaluator(_Task(), read, "cpu", mode=mode, cache_bytes=1 << 20)
    results = []
    for epoch in (1, 2, 3):
        fits.start(epoch, model)
        results.append(fits.result())
    assert len(reads) == 1 and [r[1] for r in results] == [results[0][1]] * 3
    reads.clear()
    small = Evaluator(_Task(), read, "cpu", mode=mode, cache_bytes=100)  # 4 batches of 16 x 8 floats do not fit
    for epoch in (1, 2):
        small.start(epoch, model)
        assert small.result()[1] == results[0][1]
    assert len(reads) == 2


def test_async_evaluation_leaves_the_process_threads_and_allocates_its_copy_up_front():
    """torch.set_num_threads is process-wide: an evaluation thread must not change it for the training thread;
    the weight copy exists from the start (a model whose copy does not fit fails before epoch 1, not after)."""
    model = _model(3)
    before = torch.get_num_threads()
    ev = Evaluator(_Task(), _batches, "cpu", mode="async", model=model)
    assert ev._copy is not None and ev._copy is not model
    ev.start(1, model)
    ev.result()
    assert torch.get_num_threads() == before


def test_async_evaluation_waits_for_the_next_epochs_data_and_runs_at_low_priority():
    """It starts once released (the next epoch's first batch is in hand), on a CPU at nice 19, that thread
    only: the training thread keeps its priority."""
    import os
    import threading
    import time

    seen = {}

    class Probe(_Task):
        def metrics(self, model, batch):
            seen.setdefault("nice", os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return super().metrics(model, batch)

    model = _model(4)
    ev = Evaluator(Probe(), _batches, "cpu", mode="async", model=model)
    ev.start(1, model)
    time.sleep(0.2)
    assert "nice" not in seen  # not released: nothing evaluated yet
    ev.release()
    ev.result()
    assert seen["nice"] == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


def test_auto_evaluates_asynchronously_on_every_device():
    from repb_ray.torch.evaluation import Evaluator, resolve_eval_mode
    assert resolve_eval_mode("auto") == "async"
    assert resolve_eval_mode("sync") == "sync" and resolve_eval_mode("async") == "async"
    assert Evaluator(None, list, "cpu", mode="auto").mode == "async"  # on a CPU too


def test_the_gpu_check_runs_here_in_its_small_mode(tmp_path):
    """benchmarks/gpu_check.py (plain PyTorch, no Ray): the Evaluator async vs sync with the default stream
    busy and the live weights changing (equal metrics), TrainStep in bf16 with accumulation, then full vs
    RePB; on the CPU in its small mode, so the script a GPU run depends on cannot rot."""
    import json
    import subprocess
    import sys

    from helpers import ROOT
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--subset", "2048", "--epochs", "2", "--models",
                        "cnn", "--repeats", "1", "--device", "cpu", "--check-model", "cnn", "--check-test", "1000",
                        "--check-busy", "5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    checks = json.loads(out.read_text())["checks"]
    assert checks["evaluator_equal"] and checks["accumulation_rel_diff"] < 0.02


def test_every_kth_epoch_and_the_last_are_evaluated():
    from repb_ray.torch.evaluation import evaluation_due
    assert [e for e in range(1, 8) if evaluation_due(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 7) if evaluation_due(e, 3, 6)] == [3, 6]
    assert [e for e in range(1, 5) if evaluation_due(e, 1, 4)] == [1, 2, 3, 4]
    assert [e for e in range(1, 5) if evaluation_due(e, 9, 4)] == [4]
