"""Tasks written outside the package, on Ray with 2 workers: Parquet images decoded after the pruning
filter, a tiny causal LM, a task module in a temporary directory reaching the workers through the
runtime environment, and a hand-written Train loop reaching the built-in loop's plans."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT, doc_block

from repb_ray.config import Config

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _write_png_parquet(directory, images, labels, start, files):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    os.makedirs(directory)
    bounds = np.linspace(0, len(labels), files + 1).astype(int)
    for f, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        pngs = []
        for img in images[a:b]:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        pq.write_table(pa.table({"id": np.arange(start + a, start + b, dtype=np.int64), "png": pngs,
                                 "label": labels[a:b]}), os.path.join(directory, f"part-{f}.parquet"))


@pytest.fixture(scope="module")
def png_parquet(tmp_path_factory):
    from repb_ray.tasks.fashion_mnist import FashionMNIST
    x, y = FashionMNIST().arrays("train")
    tx, ty = FashionMNIST().arrays("test")
    root = tmp_path_factory.mktemp("pngs")
    _write_png_parquet(str(root / "train"), x[:1200, 0], y[:1200], 0, 4)
    _write_png_parquet(str(root / "test"), tx[:300, 0], ty[:300], 0, 1)
    return root


def test_parquet_image_task_decodes_only_plan_rows(ray_session, png_parquet, tmp_path):
    from repb_ray.train.driver import run_training
    log = tmp_path / "decoded"
    log.mkdir()
    cfg = Config(task="task_fixtures:LoggingImages", output_dir=str(tmp_path / "out"), name="pngs",
                 task_args={"log_dir": str(log), "path": str(png_parquet / "train"),
                            "test_path": str(png_parquet / "test")},
                 epochs=3, batch_size=32, num_workers=2, tracking_uri="none", audit=True, lr=0.05)
    s = run_training(cfg, progress=False)
    assert s["epochs"] == 3 and s["metric"] == "test_accuracy" and s["final_metric"] > 0.5
    decoded = [np.load(f) for f in glob.glob(str(log / "*.npz"))]
    for e in (1, 2, 3):
        ids = np.sort(np.concatenate([d["ids"] for d in decoded if d["epoch"].size and d["epoch"][0] == e]))
        plan = np.load(tmp_path / "out" / "pngs" / "audit" / f"plan{e:03d}.npz")["ids"]
        np.testing.assert_array_equal(ids, plan)  # every plan row decoded once, no pruned row decoded
    assert len(np.load(tmp_path / "out" / "pngs" / "audit" / "plan003.npz")["ids"]) < 1200


def test_tiny_causal_lm_reports_perplexity(ray_session, tmp_path):
    from repb_ray.train.driver import run_training
    cfg = Config(task="tiny_lm:TinyLM", task_args={"size": 256}, output_dir=str(tmp_path), name="lm", epochs=2,
                 batch_size=16, num_workers=2, lr=0.5, tracking_uri="none")
    s = run_training(cfg, progress=False)
    assert s["metric"] == "test_perplexity" and s["mode"] == "min"
    assert 1.0 < s["final_metric"] < 32 and s["per_epoch"][1]["kept"] < 256


def test_task_in_a_temporary_directory_through_the_cli(ray_session, tmp_path):
    """The README's task file, run as the README says: `repb-ray train` from the directory holding the
    task (found as `python -m` would, shipped to the workers, no PYTHONPATH) and `python -m jobs.train`;
    data prepared with the prepare helper; tracked with the task's path and args."""
    from repb_ray.data import prepare_arrays
    (tmp_path / "my_task.py").write_text(doc_block("task"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 160), ("test", 64)):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        prepare_arrays({"features": x, "label": (x[:, 0] > 0).astype(np.int64)}, str(tmp_path / "data" / split),
                       rows_per_file=32)
    args = ["--set", f"task_args.train={tmp_path}/data/train", "--set", f"task_args.test={tmp_path}/data/test"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RAY_ADDRESS"] = ray_session.get_runtime_context().gcs_address
    for entry in (["-m", "repb_ray.cli", "train"], ["-m", "jobs.train"]):
        name = entry[-1].replace(".", "_")
        cwd = str(tmp_path) if entry[1] == "repb_ray.cli" else ROOT
        pre = [] if cwd == str(tmp_path) else ["env", f"PYTHONPATH={tmp_path}"]
        p = subprocess.run(pre + [sys.executable, *entry, "--config", os.path.join(ROOT, "jobs", "configs", "smoke.yaml"),
                                  "--set", "task=my_task:MyTask", "--set", f"name={name}", "--set", "num_workers=1",
                                  "--output-dir",
                                  str(tmp_path / "out"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stderr[-3000:]
        with open(tmp_path / "out" / name / "summary.json") as fh:
            s = json.load(fh)
        assert s["task"] == "my_task:MyTask" and s["epochs"] == 2 and s["num_samples"] == 160
        assert s["per_epoch"][1]["kept"] < s["num_samples"] and s["final_metric"] > 0.6  # separable: it learns
    assert s["task_args"] == {"train": f"{tmp_path}/data/train", "test": f"{tmp_path}/data/test"}
    from mlflow.tracking import MlflowClient
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/out/mlflow.db").get_run(s["mlflow_run_id"])
    assert run.data.params["task"] == "my_task:MyTask" and json.loads(run.data.params["task_args"]) == s["task_args"]


def test_own_train_loop_reaches_the_built_in_plans(ray_session, smoke_config, tmp_path):
    from repb_ray.train.driver import run_training
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from own_train_loop import run
        own = run(epochs=3, workers=2, out=str(tmp_path / "own"))
    finally:
        sys.path.pop(0)
    cfg = Config.from_yaml(smoke_config, ["epochs=3", f"output_dir={tmp_path}", "tracking_uri=none", "name=builtin"])
    built = run_training(cfg, progress=False)
    assert own == [e["plan_digest"] for e in built["per_epoch"]]
    assert len(set(own)) == 3  # the plans change: real pruning, not a trivial match


def test_fashion_mnist_subset_drawn_by_its_seed_from_parquet_and_memory(ray_session, tmp_path):
    from repb_ray.tasks.classification import train_rows
    from repb_ray.tasks.fashion_mnist import FashionMNIST
    x, y = FashionMNIST().arrays("train")
    rows = train_rows(len(y), 300, 7)
    for source in ("parquet", "memory"):
        task = FashionMNIST(train_subset=300, subset_seed=7, source=source, prepared_dir=str(tmp_path / "prep"))
        got = sorted(task.train_dataset().take_all(), key=lambda r: r["id"])
        assert [r["id"] for r in got] == list(range(300))                           # ids renumbered 0..n-1
        assert np.array_equal(np.stack([r["y"] for r in got]), y[rows])
        assert np.array_equal(np.stack([r["x"] for r in got]), x[rows]), source
