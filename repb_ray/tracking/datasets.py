"""What a run trained and was tested on, as MLflow datasets: the train and test data (source, rows,
schema, a digest of what identifies them) and each epoch's plan (its digest and kept count). Plain
dicts built in the driver from the task's Ray datasets; mlflow_tracking.py logs them."""

from __future__ import annotations

import hashlib
import json
import os

from repb_ray.redact import redact, redact_text

CONTEXT_TAG = "mlflow.data.context"


def _source(files: list[str], task: str) -> tuple[str, str]:
    """(source type, source): the common folder of the data's files, or the task that makes it."""
    if not files:
        return "repb_ray_task", task
    common = os.path.commonpath(files) if all("://" not in f for f in files) else os.path.commonprefix(files)
    kind = common.split("://", 1)[0] if "://" in common else "local"
    return kind, redact_text(common)


def describe(ds, *, name: str, context: str, num_rows: int, task: str, task_args: dict) -> dict:
    """The MLflow dataset of a Ray dataset: its files' common folder (or the task), rows, schema, and a
    digest of (task, task_args, rows, schema, files)."""
    try:
        files = sorted(ds.input_files())
    except Exception:  # a dataset built in memory has no files
        files = []
    from repb_ray.data.sources import id_block_source
    blocks = id_block_source(ds)
    schema = blocks.schema() if blocks is not None else ds.schema()  # repb_ray's own reads: without executing
    columns = [{"name": n, "type": str(t)} for n, t in zip(schema.names, schema.types)] if schema is not None else []
    kind, source = _source(files, task)
    ident = json.dumps({"task": task, "task_args": redact(task_args), "rows": num_rows, "columns": columns,
                        "files": files}, sort_keys=True, default=str)
    return {"name": name, "digest": hashlib.sha256(ident.encode()).hexdigest()[:16], "source_type": kind,
            "source": json.dumps({"uri": source, "files": len(files)}),
            "schema": json.dumps({"columns": columns}), "profile": json.dumps({"num_rows": num_rows}),
            "context": context}


def plan_record(train: dict, epoch: int, kept: int, digest: str) -> dict:
    """Epoch `epoch`'s plan over the train data, as a dataset of its own: its digest and kept count."""
    return {"name": f"{train['name']}-plan-{epoch:03d}", "digest": digest[:16], "source_type": "repb_ray_plan",
            "source": json.dumps({"dataset": train["name"], "dataset_digest": train["digest"], "epoch": epoch,
                                  "plan_digest": digest}),
            "schema": json.dumps({"columns": [{"name": "id", "type": "int64"}, {"name": "weight", "type": "float"}]}),
            "profile": json.dumps({"num_rows": kept, "epoch": epoch}), "context": f"training-epoch-{epoch:03d}"}
