"""What `pip install .` installs: the repb_ray package and nothing else at the top level (jobs/ runs from
the repository or a job's working directory, never as an installed `jobs` package)."""

import shutil
import subprocess
import sys
import zipfile

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # builds a wheel in a process of its own


def test_the_wheel_installs_repb_ray_alone(tmp_path):
    """Built from a copy of the sources (a build/ folder left by an earlier build would leak its files)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs",
                                                             "__pycache__", ".pytest_cache", "benchmarks"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = tmp_path.glob("repb_ray-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"repb_ray"}, tops
