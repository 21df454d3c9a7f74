"""The wheel and the sdist, built from a copy of the sources and installed into a clean virtual
environment: the wheel holds `repb_ray` alone (no top-level `jobs`) with its configs, `twine check`
passes, the core imports with its own dependencies only, each extra brings what its modules need, and
`repb-ray --help` and `repb-ray train --config smoke` run from the wheel. The dependencies come from
this environment (no network): each check sees only the distributions that the wheel's metadata asks
for, found through their files."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest
from helpers import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# what each extra promises: its modules import with the core's and the extra's dependencies alone
EXTRA_MODULES = {
    None: ["repb_ray", "repb_ray.core", "repb_ray.torch", "repb_ray.config", "repb_ray.cli"],
    "ray": ["repb_ray.train", "repb_ray.train.driver", "repb_ray.data.pipeline", "repb_ray.tune.sweep",
            "repb_ray.tasks.fashion_mnist"],
    "mlflow": ["repb_ray.tracking.mlflow_tracking", "mlflow"],
    "hf": ["repb_ray.hf"],
    "lightning": ["repb_ray.lightning"],
    "optuna": ["optuna"],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "*.egg-info",
                                                             "runs", "__pycache__", ".pytest_cache", "benchmarks"))
    p = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir",
                        str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("repb_ray-*.whl")
    (sdist,) = (tmp / "dist").glob("repb_ray-*.tar.gz")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    return {"tmp": tmp, "wheel": wheel, "sdist": sdist, "venv": venv, "requires": requires}


def _requirements(reqs: list[str], extra: str | None) -> list[str]:
    """The distribution names the wheel's metadata asks for, for `extra` (None: the core)."""
    out = []
    for r in reqs:
        spec = r.split(";", 1)[0].strip()
        marker = r.split(";", 1)[1] if ";" in r else ""
        wanted = f'extra == "{extra}"' in marker if extra else "extra ==" not in marker
        if wanted and not spec.startswith("repb-ray"):
            out.append(re.sub(r"\s*[<>=!~].*$", "", spec))
    if extra and not out:  # an extra made of others ([all]) names them as repb-ray[...]
        out = [x for r in reqs if f'extra == "{extra}"' in r for x in re.findall(r"\[([^\]]+)\]", r)[0].split(",")]
    return out


def _closure(names: list[str]) -> set[str]:
    """These distributions (`name` or `name[extra,...]`) and everything they require for this interpreter,
    with the requested extras, recursively."""
    from packaging.requirements import Requirement
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(n) for n in names]
    while todo:
        req = todo.pop()
        key = req.name.lower().replace("_", "-")
        wanted = [e for e in ("", *sorted(req.extras)) if (key, e) not in seen]
        seen.update((key, e) for e in wanted)
        if not wanted:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement this environment does not have
        for r in dist.requires or []:
            sub = Requirement(r)
            if sub.marker is None and "" in wanted or sub.marker is not None and any(
                    sub.marker.evaluate({"extra": e}) for e in wanted):
                todo.append(sub)
    return {k for k, _ in seen}


def _site(built, extras: list) -> str:
    """A folder holding (links to) the files of the core's and `extras`' dependency closure only."""
    tmp = built["tmp"]
    names = [n for e in [None, *extras] for n in _requirements(built["requires"], e)]
    folder = tmp / ("site-" + "-".join(e for e in extras if e) if extras else "site-core")
    if folder.exists():
        return str(folder)
    folder.mkdir()
    for key in _closure(names):
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        base = dist.locate_file("")
        for f in dist.files or []:
            top = f.parts[0]
            if top in ("..", "__pycache__") or top.endswith(".pth") or "__editable__" in top:
                continue
            link = folder / top
            if not link.exists() and os.path.exists(base / top):
                link.symlink_to(base / top)
    return str(folder)


def _run(built, args, site, timeout=120, cwd=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONPATH"] = site
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd or built["tmp"])


def test_the_wheel_holds_repb_ray_alone_with_its_configs_and_passes_twine(built):
    names = zipfile.ZipFile(built["wheel"]).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"repb_ray"}, tops
    assert "repb_ray/configs/smoke.yaml" in names and "repb_ray/configs/fashion_mnist_repb.yaml" in names
    p = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(built["wheel"]), str(built["sdist"])],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("extra", list(EXTRA_MODULES))
def test_each_extra_brings_what_its_modules_need(built, extra):
    site = _site(built, [extra] if extra else [])
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in EXTRA_MODULES[extra])
    if extra is None:  # the core without any extra: none of their distributions is reachable
        code += ("import importlib.util as u\nassert all(u.find_spec(m) is None for m in "
                 "('ray', 'mlflow', 'transformers', 'lightning', 'optuna', 'pyarrow', 'boto3', 'torchvision'))\n")
    venv = os.path.realpath(built["venv"])
    code += f"import repb_ray, os\nassert os.path.realpath(repb_ray.__file__).startswith({venv!r})\n"
    p = _run(built, [str(built["venv"] / "bin" / "python"), "-c", code], site)
    assert p.returncode == 0, p.stderr[-3000:]


def test_the_cli_runs_from_the_wheel(built, tmp_path):
    repb = str(built["venv"] / "bin" / "repb-ray")
    p = _run(built, [repb, "--help"], _site(built, []))
    assert p.returncode == 0 and "train" in p.stdout, p.stderr[-2000:]
    p = _run(built, [repb, "train", "--config", "smoke", "--output-dir", str(tmp_path / "out"), "--set", "epochs=2",
                     "--tracking-uri", "none"], _site(built, ["ray", "mlflow"]), timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert list((tmp_path / "out").glob("smoke-*/summary.json"))
