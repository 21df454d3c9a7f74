"""Test helpers: the project's paths, and driving a policy through epochs with synthetic scores."""

import os

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


def readme_task() -> str:
    """The task file of the README's "Use your own task" section, verbatim."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    block = text.split("<!-- readme-task:start -->")[1].split("<!-- readme-task:end -->")[0]
    return block.split("```python")[1].split("```")[0]


class PicklePayload:
    """Unpickling it creates the file `path`: the proof that a pickle from storage ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
