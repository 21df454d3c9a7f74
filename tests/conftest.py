import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 4 logical CPUs (2 workers + Ray Data headroom)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    import ray
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, namespace="repb_ray_tests", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_config():
    return os.path.join(ROOT, "jobs", "configs", "smoke.yaml")
