"""Golden plans: exact ids and weights for fixed (seed, scores), pinned literally.

These fail when the documented rule changes: ties at the window mean are kept (eq. 1 uses >=),
every draw of the plan of epoch e comes from np.random.default_rng([seed, e]), one uniform per id
in id order, and the world-size trim draws from the same generator after those uniforms.
"""

import hashlib

import numpy as np
import pytest

from repb_ray.core import make_policy

pytestmark = pytest.mark.unit  # in-process, seconds


def _sha(a, dtype):
    return hashlib.sha256(np.ascontiguousarray(a, dtype).tobytes()).hexdigest()[:16]


# -- a case small enough to check by hand ----------------------------------------------------------

TINY_SCORES = [1, 1, 1, 1, 0, 2, 3, 0, 5, 1, 1, 4]


def _tiny_epochs(policy):
    """Three epochs of 12 ids, 2 per global step, ids visited in the order (7 i mod 13)."""
    out = []
    for e in range(3):
        ids = policy.plan.ids
        order = np.array(sorted(ids, key=lambda i: (i * 7) % 13), np.int64)
        steps = (np.arange(order.size) // 2).astype(np.int64)
        scores = np.array([TINY_SCORES[i] if e == 0 else (i * (e + 3)) % 5 for i in order], np.float32)
        policy.observe(steps, order, scores)
        plan = policy.finish_epoch()
        out.append((plan.ids.tolist(), plan.weights.tolist()))
    return out


def test_tiny_repb_plans_are_pinned():
    p = make_policy("repb", num_samples=12, seed=0, rho=0.5, window=2)
    assert _tiny_epochs(p) == [
        ([2, 5, 6, 8, 11], [1.0] * 5),
        ([2, 3, 4, 5, 6, 9, 11], [1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 1.0]),
        ([1, 2, 3, 4, 5, 6, 9, 11], [3.0, 1.0, 1.5, 1.5, 1.0, 1.0, 1.5, 1.0]),
    ]


def test_tiny_repb_first_decision_follows_the_documented_rule():
    """Epoch 2 derived by hand: windows of W=2 steps (4 samples), keep iff s >= window mean or
    U >= rho with U = default_rng([0, 2]).random(12)[id]."""
    order = sorted(range(12), key=lambda i: (i * 7) % 13)  # 0, 2, 4, 6, 8, 10, 1, 3, ...
    u = np.random.default_rng([0, 2]).random(12)
    keep = []
    for k in range(3):
        members = order[4 * k: 4 * k + 4]
        mu = sum(TINY_SCORES[i] for i in members) / 4
        keep += [i for i in members if TINY_SCORES[i] >= mu or u[i] >= 0.5]
    p = make_policy("repb", num_samples=12, seed=0, rho=0.5, window=2)
    assert _tiny_epochs(p)[0][0] == sorted(keep) == [2, 5, 6, 8, 11]


def test_ties_at_the_window_mean_are_kept():
    p = make_policy("repb", num_samples=6, seed=3, rho=1.0, window=1)  # rho=1: every candidate pruned
    p.observe(np.array([0, 0, 0, 1, 1, 1], np.int64), np.arange(6, dtype=np.int64),
              np.array([2, 2, 2, 1, 2, 3], np.float32))
    assert p.finish_epoch().ids.tolist() == [0, 1, 2, 4, 5]  # window 0 all at its mean; id 3 below


# -- larger cases, pinned by digest ----------------------------------------------------------------

def _digests(name, n, epochs, world_size=1, **params):
    p = make_policy(name, num_samples=n, seed=7, world_size=world_size, **params)
    out = [(len(p.plan), _sha(p.plan.ids, "<i8"), _sha(p.plan.weights, "<f4"))]
    for e in range(epochs):
        ids = np.random.default_rng([99, e]).permutation(p.plan.ids)
        steps = (np.arange(ids.size) // 32).astype(np.int64)
        scores = (np.sin(ids * 0.731 + e) ** 2 * 3).astype(np.float32)
        scores[::17] = 1.0  # exact ties
        p.observe(steps, ids, scores)
        plan = p.finish_epoch()
        out.append((len(plan), _sha(plan.ids, "<i8"), _sha(plan.weights, "<f4")))
    return out


GOLDEN = {
    "repb-w4": (("repb", dict(rho=0.5, window=4)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (2196, "37b83b8e82ac4479", "1aa7e4f41ca04949"),
        (2014, "5727471d77302255", "e82c9a58af3f2f94"), (1948, "00e61d11f4c5ac5d", "e93c24dc9bfb37b1"),
        (1936, "64a9a6750e51fe8b", "308aff8331a94e87"), (1938, "2f955f1aedb96595", "d606dd6617c217ca")]),
    "repb-ws3": (("repb", dict(rho=0.7, window=1, world_size=3)), [
        (3000, "1a69d716310108f6", "3300ce5ce761cddb"), (1905, "0ea3e6fcc60da6c8", "16385b0a4aad3478"),
        (1530, "a7c3a2d5c2af01c6", "899a220e0e6b527f"), (1326, "daad9e613b8e92d1", "1c3d6273af46a36f"),
        (1299, "e142fcd8ed50dc99", "3d8bcd082155f31f"), (1320, "89ce8190263903b3", "9ecde7d787bd901d")]),
    "repb-nolwp": (("repb", dict(rho=0.6, lwp=False)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (2063, "bb8d68bae2d1dd00", "cfe2641a7a132e2f"),
        (1784, "1305b4ffcb0ca027", "1a543c8a46a8000f"), (1654, "61c0a53f8a20137f", "bf5a887ada7968c8"),
        (1633, "9778a1342db77e6b", "06960b217d59b921"), (1656, "00628f9761d0b2d7", "6ad711e2821ab080")]),
    "repb-noresample": (("repb", dict(rho=0.9, resample=False)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (1590, "4b056744410f2e75", "8483b7858212e065"),
        (795, "b90f87045c61c42a", "a68d1aa84f2bbe57"), (289, "9ce7fda5856a559f", "2d78cde1fd3762c5"),
        (168, "d10d885fc8b08785", "b21455c9d91381ee"), (89, "85af5639114fb4c8", "ab4872dc5d35b225")]),
    "repb-ctrmax": (("repb", dict(rho=0.8, ctr_max=2.0)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (1738, "a1192fb17890ef50", "4f5f612187ca8bb1"),
        (1236, "36d798fb0522708c", "4e16fe5de2c55a54"), (998, "356b9dd8100a1a74", "69e9de2cc60a2c2d"),
        (964, "435153be6c889768", "32b5b80369d35e7e"), (961, "ffe7dc207321ed68", "8121611c6751e899")]),
    "infobatch": (("infobatch", dict(prune_ratio=0.5, num_epochs=6, delta=0.7)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (2201, "4d0cbced5689158f", "e4ce9f479caadd3a"),
        (2129, "db39bc2ba8a32a0f", "b42f61c2c7afbe8c"), (2037, "a49f128d775aba7e", "0045260f8ee8d638"),
        (3001, "72a641fc97d63439", "558498ac7f057940"), (3001, "72a641fc97d63439", "558498ac7f057940")]),
    "random-ws4": (("random", dict(prune_ratio=0.3, world_size=4)), [
        (2100, "bc41e6fb1813976c", "687203ca851b12c4"), (2100, "f61342fa93fc65bc", "687203ca851b12c4"),
        (2100, "8ac7d56218419993", "687203ca851b12c4"), (2100, "d39c4ce25837e908", "687203ca851b12c4"),
        (2100, "53cad37c185ca42c", "687203ca851b12c4"), (2100, "557be0af978c5b4f", "687203ca851b12c4")]),
    "full-ws3": (("full", dict(world_size=3)), [
        (3000, "1a69d716310108f6", "3300ce5ce761cddb"), (3000, "8900bf361740c9c5", "3300ce5ce761cddb"),
        (3000, "c12c987aae4bf40f", "3300ce5ce761cddb"), (3000, "281c88aa16893479", "3300ce5ce761cddb"),
        (3000, "c7f4afe6a8cd3eb4", "3300ce5ce761cddb"), (3000, "f51bd4d10fc9b154", "3300ce5ce761cddb")]),
    "orderdp-ws2": (("orderdp", dict(prune_ratio=0.6, pool=1.5, world_size=2)), [
        (3000, "1a69d716310108f6", "3300ce5ce761cddb"), (1200, "0a23c0e3c9bf4b3f", "f623803cfb105f32"),
        (1200, "c7639fd410243a9b", "f623803cfb105f32"), (1200, "50f7f38739e2b373", "f623803cfb105f32"),
        (1200, "707c878dea63e86c", "f623803cfb105f32"), (1200, "706ab9e73653fca0", "f623803cfb105f32")]),
    "random-fullfirst": (("random", dict(prune_ratio=0.3, full_first_epoch=True)), [
        (3001, "72a641fc97d63439", "558498ac7f057940"), (2101, "7cfa0d66fc769140", "99dc314219fb155b"),
        (2101, "1ff3358ddec5491b", "99dc314219fb155b"), (2101, "0a9c01724081c565", "99dc314219fb155b"),
        (2101, "2da25bc3e3a28ccd", "99dc314219fb155b"), (2101, "3473a3345ff0fba5", "99dc314219fb155b")]),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_plans(case):
    (name, params), expected = GOLDEN[case]
    params = dict(params)
    ws = params.pop("world_size", 1)
    assert _digests(name, 3001, 5, world_size=ws, **params) == expected
