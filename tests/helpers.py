"""Test helpers: the project's paths, and driving a policy through epochs with synthetic scores."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_TASKS = os.path.join(ROOT, "examples", "tasks")


def run_epoch(policy, scores_of=None, batch=64, rng=None, world_size=None, chunk=None):
    """Observe every id of the current plan in a shuffled order, `batch` ids per global step, then
    finish the epoch. `scores_of(ids) -> float32` gives the scores (default: seeded uniform).
    chunk=None sends one step number per call; a chunk size sends a step number per sample."""
    plan = policy.plan
    rng = rng or np.random.default_rng(plan.epoch)
    ids = rng.permutation(plan.ids)
    scores = scores_of(ids) if scores_of else rng.random(ids.size).astype(np.float32)
    steps = (np.arange(ids.size) // batch).astype(np.int64)
    if chunk is None:
        for s in range(0, ids.size, batch):
            policy.observe(int(steps[s]), ids[s:s + batch], scores[s:s + batch])
    else:
        for s in range(0, ids.size, chunk):
            policy.observe(steps[s:s + chunk], ids[s:s + chunk], scores[s:s + chunk])
    return policy.finish_epoch(world_size=world_size)


def binomial_tol(p, m, sigmas=5.0):
    """`sigmas` standard deviations of a proportion estimated from m Bernoulli(p) draws."""
    return sigmas * np.sqrt(p * (1 - p) / m)


DOC_FILES = ("README.md", *(os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                              if f.endswith(".md")))
_RUNNABLE = re.compile(r"<!-- runnable: ([a-z0-9_-]+) -->\n```python\n(.*?)```", re.S)


def runnable_blocks() -> dict[str, str]:
    """name -> code of every block the README and the docs mark runnable (a name is used once)."""
    out: dict[str, str] = {}
    for f in DOC_FILES:
        with open(os.path.join(ROOT, f)) as fh:
            for name, code in _RUNNABLE.findall(fh.read()):
                assert name not in out, f"runnable block {name!r} is marked twice"
                out[name] = code
    return out


def doc_block(name: str) -> str:
    """The code of the runnable block `name`, verbatim."""
    return runnable_blocks()[name]


class PicklePayload:
    """Unpickling it creates the file `path`: the proof that a pickle from storage ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
