"""Every manifest and YAML under cluster/: parses, pins the Ray version of pyproject, keeps auth on."""

import glob
import os
import re

import pytest
import yaml

from conftest import ROOT

FILES = sorted(glob.glob(os.path.join(ROOT, "cluster", "*.yaml")))


def _pyproject_ray_version():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(r'"ray\[[^\]]*\]>=(\d+\.\d+),<(\d+\.\d+)"', text)
    assert m, "pyproject must pin ray as >=X.Y,<X.Y+1"
    return m.group(1)


def _walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_there_are_cluster_files():
    names = {os.path.basename(f) for f in FILES}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-sweep.yaml", "ray-up-aws.yaml"} <= names


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_ray_version_matches_pyproject(path):
    version = _pyproject_ray_version()
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    images = [n["image"] for d in docs for n in _walk(d) if isinstance(n, dict) and isinstance(n.get("image"), str)]
    ray_versions = [n["rayVersion"] for d in docs for n in _walk(d) if isinstance(n, dict) and "rayVersion" in n]
    for v in ray_versions:
        assert v.startswith(version + "."), f"{path}: rayVersion {v} != {version}.x"
    for image in images:
        if image.startswith("rayproject/ray:"):
            assert image.split(":")[1].startswith(version + "."), f"{path}: {image}"
    assert ray_versions or any(i.startswith("rayproject/ray:") for i in images)
    dockerfile = open(os.path.join(ROOT, "cluster", "Dockerfile")).read()
    assert f"rayproject/ray:{version}." in dockerfile


@pytest.mark.parametrize("path", FILES, ids=os.path.basename)
def test_auth_is_on_and_nothing_is_public(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    text = open(path).read()
    for d in docs:
        if d.get("kind") in ("RayCluster", "RayJob"):
            spec = d["spec"] if d["kind"] == "RayCluster" else d["spec"]["rayClusterSpec"]
            assert spec["authOptions"]["mode"] == "token", path
            assert spec["authOptions"].get("secretName"), "the token comes from a Kubernetes Secret"
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    for n in (n for d in docs for n in _walk(d)):
        if isinstance(n, dict) and n.get("kind") == "Service":
            assert n["spec"].get("type", "ClusterIP") == "ClusterIP"
    if os.path.basename(path).startswith("ray-up"):
        starts = " ".join(docs[0]["head_start_ray_commands"] + docs[0]["worker_start_ray_commands"])
        assert starts.count("RAY_AUTH_MODE=token") == 2
        assert "--dashboard-host=127.0.0.1" in starts
    assert "0.0.0.0" not in text and "LoadBalancer" not in text and "NodePort" not in text
    assert not re.search(r"auth_token\s*[:=]\s*['\"]?[0-9a-f]{16,}", text), "no token in the repo"
