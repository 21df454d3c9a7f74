"""The draw stream of an epoch: default_rng([seed, epoch]), one uniform per id in id order; runs anywhere."""

from __future__ import annotations

import numpy as np

DRAW_CHUNK = 1 << 20  # uniforms are generated in pieces of this many ids (same values, bounded memory)


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
