import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import EXAMPLE_TASKS, ROOT  # noqa: E402

from repb_ray._ray_compat import keep_local_ray_on_loopback  # noqa: E402

keep_local_ray_on_loopback()  # the test session's Ray, like the command's, listens on 127.0.0.1 (before Ray is imported)


TIERS = ("unit", "slow", "ray", "e2e")  # every test carries one: `make test-fast` runs the unit ones that are not slow


def pytest_collection_modifyitems(config, items):
    """A test without a tier is a collection error (its module's pytestmark, or its own marker)."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {', '.join(untiered[:5])}"
                                + (" ..." if len(untiered) > 5 else ""))


@pytest.fixture(scope="session")
def ray_session(s3):
    """One local Ray for the whole test session: 4 logical CPUs (2 workers + Ray Data headroom).
    The example tasks are importable by its workers through PYTHONPATH (the runtime-env route that
    users take is tested by the subprocess runs); its processes reach the S3 API server (they start
    after its credential variables are set)."""
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


@pytest.fixture(scope="session")
def s3():
    """One S3 API server on 127.0.0.1 for the test session; this process gets its (fake) credentials."""
    from servers import s3_server
    with s3_server() as server:
        old = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
