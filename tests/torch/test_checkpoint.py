"""No code from storage: a checkpoint's tensors load as plain tensors (weights_only), anything else is
refused in one line and never unpickled; a checkpoint names coordinator states of its own run only."""

import json
import os
import pickle

import pytest
import torch

from repb_ray.errors import RunError
from repb_ray.torch.schedule import PlanCosineLR
from repb_ray.train import checkpoint

pytestmark = pytest.mark.unit  # in-process, seconds


class Payload:
    """What a tampered checkpoint would hold: unpickling it runs code (here: writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    checkpoint.save(str(tmp_path), model=model, optimizer=opt, schedule=PlanCosineLR(opt, 0.1, 3), epoch=2,
                    history=[{"epoch": 1}, {"epoch": 2}], state="epoch_00002")
    return model, opt


def test_checkpoint_round_trip(tmp_path):
    model, _ = _saved(tmp_path)
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    epoch, history, state, _ = checkpoint.load(str(tmp_path), model=m2, optimizer=o2, schedule=PlanCosineLR(o2, 0.1, 3))
    assert (epoch, state, len(history)) == (2, "epoch_00002", 2)
    assert torch.equal(m2.weight, model.weight) and o2.state_dict()["state"]


@pytest.mark.parametrize("victim", ["model.pt", "optimizer.pt"])
def test_a_tampered_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, victim):
    _saved(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"weight": Payload(str(marker))}, os.path.join(tmp_path, victim))  # torch.save pickles it
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    with pytest.raises(RunError) as e:
        checkpoint.load(str(tmp_path), model=m2, optimizer=o2, schedule=PlanCosineLR(o2, 0.1, 3))
    assert "holds more than plain tensors" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as fh:  # the control: unpickling it does run the payload
        pickle.dump(Payload(str(marker)), fh)
    with open(tmp_path / "plain.pkl", "rb") as fh:
        pickle.load(fh)
    assert marker.exists()


def test_a_checkpoint_cannot_point_the_coordinator_elsewhere(tmp_path):
    _saved(tmp_path)
    (tmp_path / "coordinator.json").write_text(json.dumps({"state": "../../other-run/coordinator/epoch_00009"}))
    m2 = torch.nn.Linear(3, 2)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    with pytest.raises(RunError, match="not a state of this run"):
        checkpoint.load(str(tmp_path), model=m2, optimizer=o2, schedule=PlanCosineLR(o2, 0.1, 3))


def test_a_resumed_run_applies_the_optimizer_settings_it_records():
    """--resume with another weight_decay or momentum: the restored optimizer takes the config's values
    (run.json records them as applied), not the checkpoint's."""
    from repb_ray.config import Config
    from repb_ray.train.loop import apply_optimizer_settings
    model = torch.nn.Linear(3, 2)
    old = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    new = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    new.load_state_dict(old.state_dict())
    apply_optimizer_settings(new, Config(weight_decay=0.01, momentum=0.0))
    group = new.param_groups[0]
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.01, 0.0, False)
