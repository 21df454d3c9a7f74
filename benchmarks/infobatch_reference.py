"""A re-implementation of InfoBatch's published per-epoch steps (Qin et al. 2024, Alg. 1 and the
reference code's structure), used only as the side-by-side baseline in the overhead benchmark:
per step, `scores[ids] = losses`; at epoch start, threshold at the mean, draw the pruned subset with
np.random.choice, reset and set weights, build the shuffled index list."""

import numpy as np


class InfoBatchReference:
    def __init__(self, num_samples: int, prune_ratio: float, seed: int = 0):
        self.scores = np.full(num_samples, 3.0, dtype=np.float32)
        self.weights = np.ones(num_samples, dtype=np.float32)
        self.keep_ratio = 1.0 - prune_ratio
        self.rng = np.random.default_rng(seed)  # the reference seeds the global RNG; we do not

    def set_scores(self, ids: np.ndarray, losses: np.ndarray) -> None:
        self.scores[ids] = losses

    def prune(self) -> list:
        well_learned_mask = self.scores < self.scores.mean()
        well_learned = np.where(well_learned_mask)[0]
        remained = np.where(~well_learned_mask)[0].tolist()
        selected = self.rng.choice(well_learned, int(self.keep_ratio * len(well_learned)), replace=False)
        self.weights[:] = 1.0
        if len(selected) > 0:
            self.weights[selected] = 1.0 / self.keep_ratio
            remained.extend(selected.tolist())
        self.rng.shuffle(remained)
        return remained
