import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import EXAMPLE_TASKS, ROOT  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 4 logical CPUs (2 workers + Ray Data headroom).
    The example tasks are importable by its workers through PYTHONPATH (the runtime-env route that
    users take is tested by the subprocess runs)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    here = os.path.dirname(os.path.abspath(__file__))
    examples = os.path.join(ROOT, "examples")
    adapters = os.path.join(here, "adapters")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (EXAMPLE_TASKS, examples, here, adapters,
                                                           os.environ.get("PYTHONPATH")) if p)
    if EXAMPLE_TASKS not in sys.path:
        sys.path.insert(0, EXAMPLE_TASKS)
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="repb_ray_tests", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_config():
    return os.path.join(ROOT, "jobs", "configs", "smoke.yaml")
