"""LocalPruner: the EpochSource of any PyTorch loop, one process per rank, no Ray. Every rank keeps the
same policy; each epoch it serves this rank's batches of the plan (the same number on every rank), the
CTR weights of a batch, keeps the batch's scores on the device, and at the epoch's end gathers every
rank's scores and decides the next plan (the same on every rank: a plan is a pure function of the seed
and the scores). The Hugging Face and Lightning adapters drive it through the EpochSource contract."""

from __future__ import annotations

import numpy as np
import torch

from repb_ray.core import rng
from repb_ray.core.plan import EpochInfo, EpochPlan, pruned_fraction
from repb_ray.core.registry import make_policy, policy_class
from repb_ray.torch.distributed import gather_observations
from repb_ray.torch.epoch import EpochSteps

WITHIN_EPOCH = "within_epoch"   # the key of a state saved within an epoch: position and this rank's scores


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LocalPruner:
    """`policy` and `policy_args` as in the config (`epochs` and `target_pruned` as the run's); rank and
    world size default to torch.distributed's, settled whenever the process group is known: a framework
    may start it after the pruner is made (a policy built before it, for world size 1, is built again
    as long as no plan has been served from it; after that, one line says how to fix the script). Bad
    arguments fail here, at once."""

    def __init__(self, policy: str = "repb", policy_args: dict | None = None, *, num_samples: int, epochs: int,
                 seed: int = 0, target_pruned: float | None = None, rank: int | None = None,
                 world_size: int | None = None):
        self.seed, self.epochs, self.num_samples = seed, epochs, num_samples
        self._rank, self._world = rank, world_size
        self._explicit = rank is not None and world_size is not None
        self._served = False   # a plan of this policy has fed training (batches, weights, scores, a state)
        self._args = (policy, policy_class(policy).run_params(policy_args or {}, epochs=epochs,
                                                                target_pruned=target_pruned))
        policy_class(policy).check(num_samples, seed, **self._args[1])
        self._policy = None
        self._obs: list = []
        self._order_of: tuple = (None, None)   # (epoch, the epoch's order): computed once per epoch
        self._step = 0                          # the step of the next observe() without a step
        self._skip = 0                          # this rank's batches of the epoch trained before a resume
        self._within = None                     # a state saved within an epoch, taken up by its begin_epoch

    # -- the policy, made at first use ------------------------------------------------------------
    @property
    def policy(self):
        if not self._explicit:
            self._settle(*_rank_world())
        if self._policy is None:
            name, params = self._args
            self._policy = make_policy(name, num_samples=self.num_samples, seed=self.seed, world_size=self._world,
                                       **params)
        return self._policy

    def _settle(self, rank: int, world: int) -> None:
        """Take the process group's rank and world size; a policy built for others is built again, unless
        it already served a plan (then the ranks would disagree: an error, not a hang)."""
        if (rank, world) == (self._rank, self._world):
            return
        if self._policy is not None and self._served:
            raise RuntimeError(f"this LocalPruner served its plan as rank {self._rank} of {self._world}, and the process "
                               f"group now says rank {rank} of {world}; make the pruner after the process group starts, "
                               "or pass rank= and world_size= when you make it")
        self._rank, self._world = rank, world
        self._policy, self._order_of = None, (None, None)

    def bind(self, rank: int, world_size: int) -> None:
        """Take this rank and world size from a framework that knows them (a Trainer's global rank), as
        if given when the pruner was made (same rule: a policy that served a plan is not re-ranked)."""
        self._settle(rank, world_size)
        self._explicit = True

    @property
    def rank(self) -> int:
        self.policy  # noqa: B018 - resolves rank and world size
        return self._rank

    @property
    def world_size(self) -> int:
        self.policy  # noqa: B018 - resolves rank and world size
        return self._world

    # -- the epoch's plan -------------------------------------------------------------------------
    @property
    def plan(self) -> EpochPlan:
        return self.policy.plan

    @property
    def epoch(self) -> int:
        return self.policy.epoch

    def order(self) -> np.ndarray:
        """The plan's ids in this epoch's order (a pure function of seed and epoch, the same on every rank)."""
        plan = self.policy.plan
        self._served = True
        if self._order_of[0] != plan.epoch:
            self._order_of = (plan.epoch, rng.local_order(self.seed, plan.epoch).permutation(plan.ids))
        return self._order_of[1]

    def rank_batches(self, batch_size: int, rank: int | None = None) -> list[np.ndarray]:
        """The id batches of `rank` (default: this rank) in this epoch: positions rank, rank + W, ...
        of the epoch's order, in batches of `batch_size` (the last one partial). Every rank has the
        same number of batches of the same sizes, since the plan's size is a multiple of W."""
        ids = self.order()[self.rank if rank is None else rank::self.world_size]
        return [ids[a:a + batch_size] for a in range(0, ids.shape[0], batch_size)]

    @property
    def batches_done(self) -> int:
        """This rank's batches of the current epoch trained before the run was resumed within it (0
        otherwise): the loaders skip them, and a trainer seeks its EpochSteps past them."""
        if self._within is not None and self._within["epoch"] == self.epoch:   # loaded, epoch not begun yet
            return int(self._within["batches"])
        return self._skip

    def first_epoch_batches(self, batch_size: int) -> int:
        """This rank's batches in epoch 1: the count a trainer that sizes its schedule from the loader's
        length saw when the run started, whatever epoch a resumed run is at."""
        return -(-(self.policy.plan_sizes[0] // self.world_size) // batch_size)

    def steps_in_epoch(self, batch_size: int, grad_accum_steps: int = 1) -> int:
        """This rank's optimizer steps in the current epoch (EpochSteps' count)."""
        return len(EpochSteps(self.info, batch_size, grad_accum_steps).groups)

    def loader(self, batch_size: int, dataset=None, *, collate_fn=None, interleave: bool = False,
               first_epoch_length: bool = False, **options) -> torch.utils.data.DataLoader:
        """A DataLoader of this rank's batches of the epoch from `dataset` (map-style, indexed by
        sample id 0..n-1): `collate_fn` (default torch's) of the items, as a dict with "id" (int64
        numpy) and "weight" (float32 CTR weights, looked up when the batch is drawn) added; items
        that are not dicts come under "item". `interleave` and `first_epoch_length` as for
        RankBatchSampler; `options` go to the DataLoader (num_workers, pin_memory, ...)."""
        if dataset is None:
            raise ValueError("LocalPruner.loader needs the train dataset (map-style, indexed by sample id 0..n-1)")
        sampler = RankBatchSampler(self, batch_size, interleave=interleave, weighted=True,
                                   first_epoch_length=first_epoch_length)
        return torch.utils.data.DataLoader(_Weighted(dataset), batch_sampler=sampler,
                                           collate_fn=_WeightedCollate(collate_fn), **options)

    def weights(self, ids, device=None) -> torch.Tensor:
        """The float32 CTR weights of `ids` (all in the current plan), as a tensor on `device`."""
        ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, np.int64)
        plan = self.policy.plan
        self._served = True
        return torch.from_numpy(plan.weights_for(ids)).to(device)

    # -- the epoch contract -----------------------------------------------------------------------
    @property
    def info(self) -> EpochInfo:
        """The current epoch's EpochInfo."""
        p = self.policy
        return EpochInfo(p.epoch, len(p.plan), p.num_samples, self.world_size, tuple(p.plan_sizes))

    def begin_epoch(self, epoch: int | None = None) -> EpochInfo:
        """Start the current epoch (`epoch`, when given, must be the policy's: the plans come in order)."""
        info = self.info
        if epoch is not None and epoch != info.epoch:
            raise RuntimeError(f"asked for the plan of epoch {epoch}, the policy is at epoch {info.epoch}: epochs "
                               "are trained in order, each ended with end_epoch() (a resumed run loads the "
                               "pruner's state first)")
        self._obs, self._step, self._skip = [], 0, 0
        within, self._within = self._within, None
        if within is not None and within["epoch"] == info.epoch:
            self._obs = [(within["steps"], within["ids"], torch.from_numpy(within["scores"]))]
            self._step, self._skip = int(within["step"]), int(within["batches"])
        return info

    def observe(self, ids, scores: torch.Tensor, step: int | None = None) -> None:
        """A batch's scores at optimizer step `step` of the epoch (default: one step per call), kept on
        their device until the epoch ends."""
        if isinstance(scores, (int, np.integer)) and not isinstance(ids, (int, np.integer)):
            raise TypeError("observe takes (ids, scores, step): the step comes last")
        ids = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, np.int64)
        self.policy  # noqa: B018 - settles rank and world size before the policy takes scores
        self._served = True
        step = self._step if step is None else int(step)
        self._step = step + 1
        scores = scores.detach() if isinstance(scores, torch.Tensor) else torch.from_numpy(np.asarray(scores))
        self._obs.append((step, ids.astype(np.int64, copy=False), scores.float()))

    def end_epoch(self) -> EpochInfo:
        """Gather every rank's observations of the epoch and decide the next plan (on every rank);
        returns the next epoch's info."""
        steps, ids, scores = self._pending()
        self._obs = []
        steps, ids, scores = gather_observations(steps, ids, scores)
        self.policy.observe(steps, ids, scores)
        self.policy.finish_epoch(world_size=self.world_size)
        self._step, self._skip = 0, 0
        return self.info

    def pruned_fraction(self, epochs: int | None = None) -> float:
        """1 - trained / (epochs n) over the first `epochs` epochs (default: those trained so far)."""
        return pruned_fraction(self.policy.plan_sizes[: epochs or max(self.policy.epoch - 1, 1)],
                               self.policy.num_samples)

    # -- state ------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int = 0) -> dict:
        """The policy's state as plain types and tensors: what a trainer's checkpoint can hold and
        torch.load(weights_only=True) can read back (no numpy objects, nothing pickled). Saved within
        an epoch, `batches_done` is this rank's batches trained in it: the state then also holds this
        rank's scores so far (each rank saves its own, as trainers save each rank's RNG state)."""
        state = _to_plain(self.policy.state_dict())
        if batches_done:
            steps, ids, scores = self._pending()
            state[WITHIN_EPOCH] = {"epoch": self.epoch, "batches": int(batches_done), "step": self._step,
                                   "rank": self.rank, "world_size": self.world_size, "steps": torch.from_numpy(steps),
                                   "ids": torch.from_numpy(ids), "scores": torch.from_numpy(scores)}
        elif self._obs:
            raise RuntimeError("state_dict() within an epoch needs batches_done= (this rank's batches trained in it), "
                               "so that a resumed run skips them and keeps their scores")
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue where the saved pruner was: at its plan, or within its epoch (the same rank and number
        of ranks: each rank's share of an epoch depends on them)."""
        state = dict(state)
        within = state.pop(WITHIN_EPOCH, None)
        self.policy.load_state_dict(_from_plain(state))
        self._served = True
        if within is not None:
            saved = (int(within["rank"]), int(within["world_size"]))
            if saved != (self.rank, self.world_size):
                raise ValueError(f"this checkpoint was saved within epoch {int(within['epoch'])} by rank {saved[0]} of "
                                 f"{saved[1]}, and this process is rank {self.rank} of {self.world_size}: continue it "
                                 f"with {saved[1]} process(es), or from a checkpoint saved at an epoch's end")
            self._within = {**_from_plain(within), "epoch": int(within["epoch"])}
        elif len(self.policy.plan) % self.world_size:
            self.policy.retrim(self.world_size)  # saved at an epoch's end by another number of ranks

    def _pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This rank's (steps, ids, scores) observed so far in the epoch, on the host."""
        if not self._obs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        steps = np.concatenate([np.broadcast_to(np.asarray(s, np.int64), (len(i),)) for s, i, _ in self._obs])
        ids = np.concatenate([i for _, i, _ in self._obs])
        scores = torch.cat([s.reshape(-1) for _, _, s in self._obs]).cpu().numpy().astype(np.float32)
        return steps, ids, scores


def _map_leaves(value, leaf):
    """`value` with `leaf` applied to everything that is not a dict, list or tuple."""
    if isinstance(value, dict):
        return {k: _map_leaves(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_leaves(v, leaf) for v in value)
    return leaf(value)


def _plain_leaf(v):
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v).copy())
    return v.item() if isinstance(v, np.generic) else v


def _to_plain(value):
    """numpy arrays as tensors, numpy scalars as Python numbers, at any depth."""
    return _map_leaves(value, _plain_leaf)


def _from_plain(value):
    """The inverse of _to_plain: tensors as numpy arrays."""
    return _map_leaves(value, lambda v: v.numpy() if isinstance(v, torch.Tensor) else v)


class RankBatchSampler:
    """A DataLoader batch sampler over a LocalPruner's plan: this rank's batches of the epoch. With
    `interleave=True` it yields every rank's batches, one round at a time (rank 0's first, rank 1's
    first, ...), for loaders that a framework then shards round-robin across processes (accelerate).
    It has no `batch_size` attribute on purpose: its last batches are shorter, and a sharding wrapper
    must take them as they are (accelerate's dynamic-batch mode), not pad them to a full batch.
    A run resumed within an epoch starts after the batches it trained (`LocalPruner.batches_done`).
    `first_epoch_length`: the length is epoch 1's, for a trainer that sizes its schedule and epoch
    loop from the loader's length once, when it starts (a resumed run then sees what the first saw)."""

    def __init__(self, pruner: LocalPruner, size: int, interleave: bool = False, weighted: bool = False,
                 first_epoch_length: bool = False):
        self.pruner, self.size, self.interleave, self.weighted = pruner, size, interleave, weighted
        self.first_epoch_length = first_epoch_length

    def _indices(self, batch: np.ndarray) -> list:
        """A batch's sampler indices: ids, or (id, weight) pairs drawn from the live plan (a weighted
        batch is looked up in the process that iterates the sampler, so loader workers need no plan)."""
        if not self.weighted:
            return batch.tolist()
        return list(zip(batch.tolist(), self.pruner.policy.plan.weights_for(batch).tolist()))

    def __iter__(self):
        skip = self.pruner.batches_done
        if not self.interleave:
            yield from (self._indices(b) for b in self.pruner.rank_batches(self.size)[skip:])
            return
        per_rank = [self.pruner.rank_batches(self.size, r)[skip:] for r in range(self.pruner.world_size)]
        for round_ in zip(*per_rank):
            yield from (self._indices(b) for b in round_)

    def __len__(self) -> int:
        n = (self.pruner.first_epoch_batches(self.size) if self.first_epoch_length
             else len(self.pruner.rank_batches(self.size)))   # a resumed epoch's too: trainers count those done
        return n * self.pruner.world_size if self.interleave else n


class _Weighted(torch.utils.data.Dataset):
    """dataset[(id, weight)] -> (id, weight, dataset[id])."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, w = key
        return i, w, self.dataset[i]


class _WeightedCollate:
    """Collate (id, weight, item) triples: the items by `collate_fn`, "id" and "weight" added."""

    def __init__(self, collate_fn=None):
        self.collate_fn = collate_fn or torch.utils.data.default_collate

    def __call__(self, triples):
        batch = self.collate_fn([item for _, _, item in triples])
        batch = dict(batch) if isinstance(batch, dict) or hasattr(batch, "keys") else {"item": batch}
        batch["id"] = np.fromiter((i for i, _, _ in triples), np.int64, len(triples))
        batch["weight"] = torch.tensor([w for _, w, _ in triples], dtype=torch.float32)
        return batch
