"""Every random stream of a run, named once: the plan's draws of an epoch (default_rng([seed, epoch]),
one uniform per id in id order), the world-size re-trim, the epoch's order in a local loop and in the
Ray Data pipeline, the ranks' shuffle buffers, a sweep's sampled values, the synthetic task's data and a
task's drawn training subset.
Each stream has its own tag, so no two uses share a stream by accident. Runs anywhere."""

from __future__ import annotations

import numpy as np

DRAW_CHUNK = 1 << 20  # uniforms are generated in pieces of this many ids (same values, bounded memory)

# The tags that set the streams apart (each stream is default_rng([seed, epoch, TAG, ...]), except the plan's
# draws, which are default_rng([seed, epoch]) as eqs. 1-2 are written).
RETRIM = 1               # the samples moved out when a plan is trimmed to a multiple of the world size
LOCAL_ORDER = 0x10CA     # the epoch's order of a plan in a local loop (LocalPruner, PlanSampler)
BLOCK_ORDER = 0x0DE4     # the order in which a Ray Data epoch serves a source's blocks
ROW_ORDER = 0x5407       # the order of a block's kept rows in a Ray Data epoch
SHUFFLE = 0xB0F          # a rank's local shuffle buffer in a Ray Data epoch
SWEEP, SYNTHETIC = 0x5EE9, 7   # a sweep's sampled values; the synthetic task's data (no epoch)
SUBSET = 0x5B5E          # the training rows a task draws with task_args.subset_seed (no epoch)


def rng_after(seed: int, epoch: int, consumed: int) -> np.random.Generator:
    """default_rng([seed, epoch]), the generator of every draw that decides the plan of `epoch`,
    after `consumed` uniforms were taken from it (each uniform uses one 64-bit output of PCG64, so
    this is an O(log) jump, not a replay)."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, epoch]))
    if consumed:
        bits.advance(consumed)
    return np.random.Generator(bits)


def uniforms(seed: int, epoch: int, lo: int, hi: int):
    """Yield (start, u) pieces covering ids [lo, hi): u[j] is the uniform of id start + j, exactly as
    default_rng([seed, epoch]).random(n)[start:start + len(u)] would give it."""
    gen = rng_after(seed, epoch, lo)
    for start in range(lo, hi, DRAW_CHUNK):
        yield start, gen.random(min(DRAW_CHUNK, hi - start))


def stream(seed: int, epoch: int, tag: int, *more: int) -> np.random.Generator:
    """The stream `tag` of (seed, epoch), further keyed by `more` (a rank, a block's first id)."""
    return np.random.default_rng([seed, epoch, tag, *more])


def retrim(seed: int, epoch: int) -> np.random.Generator:
    return stream(seed, epoch, RETRIM)


def local_order(seed: int, epoch: int) -> np.random.Generator:
    return stream(seed, epoch, LOCAL_ORDER)


def block_order(seed: int, epoch: int) -> np.random.Generator:
    return stream(seed, epoch, BLOCK_ORDER)


def row_order(seed: int, epoch: int, first_id: int) -> np.random.Generator:
    return stream(seed, epoch, ROW_ORDER, first_id)


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank `rank`'s local shuffle buffer in `epoch`."""
    return int(stream(seed, epoch, SHUFFLE, rank).integers(2**31))


def sweep_draws(sweep_seed: int, trial: int, sample: int) -> np.random.Generator:
    return np.random.default_rng([sweep_seed, trial, sample])


def synthetic(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SYNTHETIC])


def data_subset(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SUBSET])
