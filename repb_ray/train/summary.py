"""summary.json of a run: the config (redacted), the task, the policy, the final and best metric, the
pruned fraction, and a row per epoch. Runs in the driver."""

from __future__ import annotations

from repb_ray.code_version import code_version
from repb_ray.config import Config
from repb_ray.core.plan import pruned_fraction
from repb_ray.core.registry import policy_class
from repb_ray.redact import redact

PER_EPOCH = ("epoch", "kept", "world_size", "pruned_fraction", "cum_pruned_fraction", "train_loss", "epoch_time_s",
             "train_time_s", "data_wait_s", "compute_s", "observe_s", "steps", "weight_mean", "weight_max", "plan_digest",
             "lr")


def time_spent(history: list, moments: dict) -> dict | None:
    """Where the run's wall time went, in seconds, from the driver's `moments` (wall-clock "started",
    "fit_start", "fit_end", "ended") and the first worker start recorded in `history`: the driver's setup
    (ownership, Ray, datasets, coordinator, tracking), the worker group's start (processes, the trainer's
    controller) and each worker's own (task, model, evaluator), the epochs (of which training), the rest of
    the fit (reports, checkpoints and teardown after the epochs; restarts), and the driver's finish (summary,
    tracking). Only this invocation's epochs count: those from its first worker start on (a resumed run's
    earlier epochs ran under another driver). None without a worker start in this fit (a run resumed after
    its last epoch)."""
    if not {"started", "fit_start", "fit_end", "ended"} <= set(moments):
        return None
    m = moments
    i = next((i for i, h in enumerate(history) if h.get("worker_entered_at", -1.0) >= m["fit_start"]), None)
    if i is None:
        return None
    first, ours = history[i], history[i:]
    epochs = sum(h.get("epoch_time_s") or 0.0 for h in ours)
    workers_start = first["worker_entered_at"] - m["fit_start"]
    return {"setup_s": m["fit_start"] - m["started"], "workers_start_s": workers_start,
            "worker_setup_s": first["worker_setup_s"], "epochs_s": epochs,
            "training_s": sum(h.get("train_time_s") or 0.0 for h in ours),
            "rest_of_fit_s": m["fit_end"] - m["fit_start"] - workers_start - first["worker_setup_s"] - epochs,
            "finish_s": m["ended"] - m["fit_end"]}


def build_summary(cfg: Config, task, history: list, *, num_samples: int, wall_time_s: float) -> dict:
    key = f"test_{task.metric}"
    values = [h[key] for h in history if key in h]
    best = (max if task.mode == "max" else min)(values) if values else None
    trained = sum(h["kept"] for h in history)
    decisions = policy_class(cfg.policy).DECISIONS
    out = {
        "config": redact(cfg.to_dict()), "task": cfg.task, "task_args": redact(dict(cfg.task_args)),
        "policy": cfg.policy, "policy_args": redact(dict(cfg.policy_args)), "target_pruned": cfg.target_pruned,
        "seed": cfg.seed, "num_workers": cfg.num_workers, "epochs": len(history), "num_samples": num_samples,
        "metric": key, "mode": task.mode, "final_metric": values[-1] if values else None, "best_metric": best,
        "pruned_fraction": pruned_fraction([h["kept"] for h in history], num_samples) if history else None,
        "knob_capped_epochs": [h["epoch"] for h in history if h.get("knob_capped")],
        "restarts": [r for h in history for r in h.get("restarts", ())],  # each resume: epoch, step, world sizes
        "eval_mode": history[-1].get("eval_mode") if history else None,  # as resolved (eval_mode auto)
        "samples_trained": trained, "wall_time_s": wall_time_s, "data": task.summary_info(num_samples),
        "code": code_version(),  # as the driver found it at its start (run_training reads it first)
        "per_epoch": [{k: v for k, v in h.items() if k in PER_EPOCH or k.startswith(("test_", "boundary_"))
                       or k in decisions}
                      for h in history],
    }
    stalls = [h["boundary_stall_s"] for h in history if "boundary_stall_s" in h]
    if stalls:  # last step of an epoch to the first step of the next, slowest rank
        out["boundary_stall_s"] = {"mean": sum(stalls) / len(stalls), "max": max(stalls)}
    if "test_accuracy" in (history[-1] if history else {}):
        out["final_test_accuracy"] = history[-1]["test_accuracy"]
        out["best_test_accuracy"] = max(h["test_accuracy"] for h in history if "test_accuracy" in h)
    return out
