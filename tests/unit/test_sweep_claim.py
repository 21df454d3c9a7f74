"""A sweep's home and output folder: `--overwrite` refuses a folder that is not a sweep (nothing deleted),
and Tune's pickled state is loaded only where this sweep recorded it, unchanged since its last save."""

import os
import pickle

import pytest
from helpers import ROOT, PicklePayload

from repb_ray.config import ConfigError
from repb_ray.tune import state_digest
from repb_ray.tune.spec import SweepSpec
from repb_ray.tune.sweep import SweepClaim

pytestmark = pytest.mark.slow  # imports Ray Tune
SWEEP = os.path.join(ROOT, "jobs", "configs", "sweep_smoke.yaml")


def _spec(tmp_path, *extra):
    return SweepSpec.from_yaml(SWEEP, [f"output_dir={tmp_path}", "tracking_uri=none", *extra])


def test_overwrite_refuses_a_folder_that_is_not_a_sweep(tmp_path):
    out = tmp_path / "sweep_smoke"
    (out / "trials").mkdir(parents=True)
    (out / "trials" / "precious.txt").write_text("keep")
    (out / "sweep_table.txt").write_text("keep")
    spec = _spec(tmp_path)
    with pytest.raises(ConfigError, match=r"--overwrite: .* is not a sweep's folder \(no sweep.json\)"):
        SweepClaim(spec, spec.base_config(), str(out), overwrite=True)
    assert (out / "trials" / "precious.txt").read_text() == "keep" and (out / "sweep_table.txt").exists()


def test_tune_state_is_loaded_only_where_this_sweep_recorded_it_and_unchanged(tmp_path):
    home, exp = str(tmp_path / "home"), tmp_path / "tune" / "s"
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(pickle.dumps(PicklePayload(str(tmp_path / "ran"))))
    (exp / "experiment_state-1.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds Tune state that this sweep did not write"):
        state_digest.check(str(exp), home, resuming=False)  # planted in a sweep that never ran here
    state_digest.record(str(exp), home)
    with pytest.raises(ConfigError, match="did not write"):
        state_digest.check(str(exp), home, resuming=False)  # a new sweep's folder: never
    state_digest.check(str(exp), home, resuming=True)  # this sweep's own, unchanged: loaded
    (exp / "tuner.pkl").write_bytes(pickle.dumps(PicklePayload(str(tmp_path / "ran2"))))  # swapped since
    with pytest.raises(ConfigError, match="or that changed since its last save"):
        state_digest.check(str(exp), home, resuming=True)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "ran2").exists()
