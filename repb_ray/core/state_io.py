"""Save and load a policy state_dict as one .npz file (arrays stay exact, scalars as JSON)."""

from __future__ import annotations

import json
import os

import numpy as np


def save_state(path: str, state: dict) -> None:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    meta = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    tmp = path + ".tmp.npz"
    np.savez(tmp, __meta__=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def load_state(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        state = json.loads(str(f["__meta__"]))
        state.update({k: f[k] for k in f.files if k != "__meta__"})
    return state
