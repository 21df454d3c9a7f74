"""A run's one home is STORAGE/NAME (a path or an S3 bucket): its record and owner live there beside its
checkpoints, the output folder holds only what a person reads, cleanup deletes only what this invocation
made (never on a failed listing), --overwrite removes only a run's own entries, and a folder that is
not a run is neither used nor deleted."""

import json
import os
import uuid

import pytest

from repb_ray import layout, storage
from repb_ray.config import Config
from repb_ray.errors import ConfigError, RunError
from repb_ray.layout import OWNER_DIR
from repb_ray.train import run_home
from repb_ray.train.ownership import latest_generation

pytestmark = pytest.mark.unit  # in-process, seconds


def _cfg(out, **kw):
    return Config(task="synthetic", output_dir=str(out), name=kw.pop("name", "r1"), **kw)


@pytest.fixture(params=["path", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """Where homes live: a folder, or a prefix in a bucket of the S3 API server."""
    if request.param == "path":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3").uri("runs", uuid.uuid4().hex[:8])


def _entries(location):
    return sorted(storage.list_entries(location))


def test_a_new_run_keeps_its_record_and_owner_in_its_home_and_nothing_in_outputs(tmp_path, store):
    cfg = _cfg(tmp_path / "out", storage_path=store)
    claim = run_home.claim(cfg)
    home = storage.join(store, "r1")
    assert claim.state == "new" and claim.home == home
    assert _entries(home) == [OWNER_DIR, layout.RECORD_FILE]
    assert storage.read_json(storage.join(home, layout.RECORD_FILE))["fingerprint"] == run_home.fingerprint(cfg)
    assert os.listdir(tmp_path / "out" / "r1") == []  # outputs hold what a person reads, written later
    claim.release()
    again = run_home.claim(cfg)
    assert again.state == "resume" and latest_generation(home) == 2
    again.release()


def test_two_output_folders_on_one_store_are_one_run(tmp_path, store):
    """Two people, their own output folders, one bucket: the second is refused while the first lives,
    whatever its output folder (ownership lives in the home)."""
    first = run_home.claim(_cfg(tmp_path / "alice", storage_path=store))
    try:
        with pytest.raises(RunError, match="is being run by another driver"):
            run_home.claim(_cfg(tmp_path / "bob", storage_path=store))
        assert not (tmp_path / "bob" / "r1").exists()
    finally:
        first.release()


def test_a_run_is_finished_only_once_it_recorded_so_with_this_config(tmp_path, store):
    cfg = _cfg(tmp_path, storage_path=store)
    claim = run_home.claim(cfg)
    (tmp_path / "r1" / "summary.json").write_text(json.dumps({"per_epoch": [{"epoch": 1}]}))
    assert run_home.finished_summary(cfg) is None  # the summary alone is not the end (tracking may be due)
    claim.finish()
    claim.release()
    assert run_home.finished_summary(cfg) == {"per_epoch": [{"epoch": 1}]}
    assert run_home.finished_summary(cfg.replace(epochs=cfg.epochs + 1)) is None
    again = run_home.claim(cfg)
    assert run_home.finished_summary(cfg) is None
    again.release()


def test_failure_before_the_first_checkpoint_removes_only_this_invocations_files(tmp_path, store):
    (tmp_path / "other-run").mkdir()
    (tmp_path / "other-run" / "summary.json").write_text("{}")
    (tmp_path / "mlflow.db").write_text("db")
    storage.write_json(storage.join(store, "neighbour", "keep.json"), {})
    cfg = _cfg(tmp_path, storage_path=store)
    claim = run_home.claim(cfg)
    (tmp_path / "r1" / "summary.json").write_text("{}")   # written by this invocation
    claim.abandon()
    claim.release()
    assert not (tmp_path / "r1").exists() and not storage.exists(storage.join(store, "r1"))  # nothing left at all
    assert (tmp_path / "other-run" / "summary.json").exists() and (tmp_path / "mlflow.db").exists()
    assert storage.exists(storage.join(store, "neighbour", "keep.json"))
    # a home and an output folder that were there before keep whatever this invocation did not write
    run_home.claim(cfg).release()
    (tmp_path / "r1").mkdir(exist_ok=True)
    (tmp_path / "r1" / "notes.txt").write_text("mine")
    (tmp_path / "r1" / "error.log").write_text("an earlier failure")
    claim = run_home.claim(cfg)
    assert not claim.made_home
    claim.abandon()
    claim.release()
    assert sorted(os.listdir(tmp_path / "r1")) == ["error.log", "notes.txt"]
    assert storage.exists(storage.join(store, "r1", layout.RECORD_FILE))


def test_a_listing_that_fails_during_a_failure_deletes_nothing(tmp_path, capsys):
    """The failure cleanup of a new run cannot list its home (a 503, an expired token): it keeps every
    file instead of reading the failure as "no checkpoints"."""
    from repb_ray.train.driver import _cleanup_failed
    cfg = _cfg(tmp_path, storage_path=str(tmp_path / "store"))
    claim = run_home.claim(cfg)
    home = tmp_path / "store" / "r1"
    (home / "epoch_000001").mkdir()
    (home / "epoch_000001" / "model.pt").write_text("weights")
    os.rename(home, str(home) + ".away")  # the listing now fails: the home is a file in the way
    open(home, "w").close()
    try:
        _cleanup_failed(claim)
    finally:
        os.unlink(home)
        os.rename(str(home) + ".away", home)
    claim.release()
    assert (home / "epoch_000001" / "model.pt").exists() and (home / layout.RECORD_FILE).exists()
    assert "kept" in capsys.readouterr().out
    with pytest.raises(OSError):
        storage.list_entries(str(tmp_path / "store" / "r1" / layout.RECORD_FILE))


def test_another_config_under_the_name_is_refused_from_any_output_folder(tmp_path, store):
    first = _cfg(tmp_path / "head-a", storage_path=store)
    run_home.claim(first).release()
    other = _cfg(tmp_path / "head-b", storage_path=store, epochs=first.epochs + 1)
    with pytest.raises(ConfigError, match=r"was started with another config \(epochs: 15 -> 16\)"):
        run_home.claim(other)
    claim = run_home.claim(other, resume=True)
    assert claim.state == "resume"
    claim.release()
    # --overwrite clears this run's entries of its home, and only them
    storage.write_json(storage.join(store, "keep-me", "x.json"), {})
    storage.write_json(storage.join(store, "r1", "epoch_000001", "meta.json"), {})
    claim = run_home.claim(other, overwrite=True)
    assert claim.state == "new" and not storage.exists(storage.join(store, "r1", "epoch_000001"))
    assert storage.exists(storage.join(store, "keep-me", "x.json"))
    claim.release()


def test_a_folder_that_is_not_a_run_is_neither_used_nor_deleted(tmp_path, store):
    """storage_path=/mnt/shared with --set name=datasets --overwrite must not remove a `datasets` folder."""
    storage.write_json(storage.join(store, "datasets", "train.json"), {"rows": 1})
    for overwrite in (False, True):
        with pytest.raises(RunError, match="holds files that are not a repb_ray run"):
            run_home.claim(_cfg(tmp_path, name="datasets", storage_path=store), overwrite=overwrite)
    assert storage.read_json(storage.join(store, "datasets", "train.json")) == {"rows": 1}
    assert _entries(storage.join(store, "datasets")) == ["train.json"]  # no owner written into it
    assert not (tmp_path / "datasets").exists()


def test_overwrite_refuses_a_home_with_entries_a_run_does_not_write(tmp_path, store):
    cfg = _cfg(tmp_path, storage_path=store)
    run_home.claim(cfg).release()
    storage.write_json(storage.join(store, "r1", "notes.json"), {})
    with pytest.raises(RunError, match=r"--overwrite: .* holds entries a run does not write \(notes.json\)"):
        run_home.claim(cfg, overwrite=True)
    assert storage.exists(storage.join(store, "r1", layout.RECORD_FILE))


def test_overwrite_removes_the_runs_own_outputs_only(tmp_path):
    cfg = _cfg(tmp_path)
    run_home.claim(cfg).release()
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "summary.json").write_text("{}")
    (tmp_path / "r1" / "my-notes.txt").write_text("keep")
    (tmp_path / "r1" / ".injected_worker_e2_s1_r0").write_text("")
    claim = run_home.claim(cfg.replace(epochs=3), overwrite=True)
    assert sorted(os.listdir(tmp_path / "r1")) == ["my-notes.txt"]
    claim.release()


def test_checkpoints_without_a_record_are_not_resumed_nor_deleted(tmp_path):
    (tmp_path / "ray_results" / "r1" / "epoch_003").mkdir(parents=True)
    for overwrite in (False, True):
        with pytest.raises(RunError, match="not a repb_ray run"):
            run_home.claim(_cfg(tmp_path), overwrite=overwrite)
    assert (tmp_path / "ray_results" / "r1" / "epoch_003").exists()
    assert not (tmp_path / "r1").exists()  # nothing left behind by the refused claims


def test_a_sweep_is_not_a_run(tmp_path, store):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "sweep.json").write_text("{}")
    with pytest.raises(ConfigError, match="is the folder of a sweep"):
        run_home.claim(_cfg(tmp_path, name="s1"))
    storage.write_json(storage.join(store, "s2", layout.SWEEP_RECORD), {})
    with pytest.raises(ConfigError, match="is the home of a sweep"):
        run_home.claim(_cfg(tmp_path, name="s2", storage_path=store))


def test_a_loser_deletes_nothing_of_the_new_holders(tmp_path):
    """A driver that lost its run (another took it over) finds abandon a no-op: the new holder's record
    and storage stay."""
    cfg = _cfg(tmp_path)
    claim = run_home.claim(cfg)
    from repb_ray.train.ownership import claim_path
    assert storage.create_exclusive(claim_path(claim.home, 2), b'{"host": "node-7", "pid": 1}')
    claim.owner.lost = "taken over"
    claim.abandon()
    claim.release()
    assert storage.exists(storage.join(claim.home, layout.RECORD_FILE)) and latest_generation(claim.home) == 2
