"""repb_ray.train.summary.time_spent: a run's wall time split into the driver's and the workers' phases."""

import pytest

from repb_ray.train.summary import time_spent

pytestmark = pytest.mark.unit  # in-process, milliseconds


def test_the_phases_split_the_wall_time_from_the_first_worker_start():
    history = [{"epoch": 1, "epoch_time_s": 4.0, "train_time_s": 3.0, "worker_entered_at": 1003.0, "worker_setup_s": 1.5},
               {"epoch": 2, "epoch_time_s": 2.0, "train_time_s": 1.5}]
    moments = {"started": 1000.0, "fit_start": 1001.0, "fit_end": 1012.0, "ended": 1014.5}
    assert time_spent(history, moments) == {"setup_s": 1.0, "workers_start_s": 2.0, "worker_setup_s": 1.5,
                                            "epochs_s": 6.0, "training_s": 4.5, "rest_of_fit_s": 1.5, "finish_s": 2.5}
    spent = time_spent(history, moments)
    assert sum(v for k, v in spent.items() if k != "training_s") == moments["ended"] - moments["started"]


def test_a_later_start_of_the_run_does_not_move_the_first():
    history = [{"epoch": 1, "epoch_time_s": 4.0, "worker_entered_at": 1003.0, "worker_setup_s": 1.0},
               {"epoch": 2, "epoch_time_s": 2.0, "worker_entered_at": 1009.0, "worker_setup_s": 1.0}]
    moments = {"started": 1000.0, "fit_start": 1001.0, "fit_end": 1020.0, "ended": 1021.0}
    assert time_spent(history, moments)["workers_start_s"] == 2.0


def test_without_a_worker_start_or_the_drivers_moments_there_is_no_breakdown():
    moments = {"started": 0.0, "fit_start": 1.0, "fit_end": 2.0, "ended": 3.0}
    assert time_spent([{"epoch": 1, "epoch_time_s": 1.0}], moments) is None
    assert time_spent([{"epoch": 1, "worker_entered_at": 1.0, "worker_setup_s": 0.1}], {"started": 0.0}) is None


def test_a_resumed_runs_earlier_epochs_ran_under_another_driver_and_do_not_count():
    history = [{"epoch": 1, "epoch_time_s": 4.0, "train_time_s": 3.0, "worker_entered_at": 500.0, "worker_setup_s": 1.0},
               {"epoch": 2, "epoch_time_s": 2.0, "train_time_s": 1.5, "worker_entered_at": 1003.0, "worker_setup_s": 1.0}]
    moments = {"started": 1000.0, "fit_start": 1001.0, "fit_end": 1007.0, "ended": 1008.0}
    spent = time_spent(history, moments)
    assert spent["workers_start_s"] == 2.0 and spent["epochs_s"] == 2.0 and spent["training_s"] == 1.5
    assert sum(v for k, v in spent.items() if k != "training_s") == moments["ended"] - moments["started"]
    assert time_spent(history[:1], moments) is None  # resumed after its last epoch: no worker start in this fit
