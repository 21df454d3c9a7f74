"""Every file under cluster/: the KubeRay manifests against the CRD schemas of each KubeRay version
the cluster README claims (strict: unknown fields rejected, as kubectl's strict field validation
does), the `ray up` file through Ray's own config validation, and what a first real use needs
(auth from a Secret, shared RWX storage with a class, pinned images and AMI, credentials on every
node, nothing public, no repository clutter in the image)."""

import copy
import glob
import gzip
import json
import os
import re

import jsonschema
import pytest
import yaml
from helpers import ROOT

import repb_ray

pytestmark = pytest.mark.unit  # in-process, seconds

CLUSTER = os.path.join(ROOT, "cluster")
SCHEMAS = os.path.join(ROOT, "tests", "data", "kuberay")
VERSIONS = sorted(os.listdir(SCHEMAS))
MANIFESTS = ["raycluster.yaml", "rayjob-train.yaml", "rayjob-sweep.yaml"]


def _docs(name):
    with open(os.path.join(CLUSTER, name)) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _strict(schema):
    """Reject unknown fields wherever the schema lists the fields of an object."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(s)
    return s


def _schema(version, kind):
    with gzip.open(os.path.join(SCHEMAS, version, f"{kind}.json.gz")) as fh:
        return _strict(json.load(fh)["schema"])


def _pyproject_ray_version():
    """The Ray release repb_ray is tested with: the floor of the `ray` extra (the images run it)."""
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    m = re.search(r'"ray\[[^\]]*\]>=(\d+\.\d+)"', text)
    assert m, "pyproject's ray extra must say ray[...]>=X.Y"
    return m.group(1)


def test_the_readme_claims_exactly_the_tested_kuberay_versions():
    readme = open(os.path.join(CLUSTER, "README.md")).read()
    assert VERSIONS == ["v1.6.0", "v1.6.2"]
    assert "KubeRay >= 1.6.0" in readme and "1.5" not in readme


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_strictly_against_the_kuberay_crds(version, name):
    for doc in _docs(name):
        if doc["apiVersion"] == "ray.io/v1":
            jsonschema.validate(doc, _schema(version, doc["kind"]))


def test_strict_validation_rejects_an_unknown_field():
    doc = _docs("raycluster.yaml")[0]
    doc["spec"]["authOptions"]["tokenFile"] = "x"
    with pytest.raises(jsonschema.ValidationError, match="tokenFile"):
        jsonschema.validate(doc, _schema(VERSIONS[0], "RayCluster"))


@pytest.mark.parametrize("name", MANIFESTS)
def test_auth_from_a_secret_storage_every_node_reaches_and_no_public_port(name):
    """The RayCluster mounts the shared volume; the RayJobs need none: each run's home is on the bucket
    and tracking goes to the shipped MLflow server (never SQLite on a shared volume)."""
    for doc in _docs(name):
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["authOptions"] == {"mode": "token", "secretName": "repb-ray-auth"}
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
        assert spec["rayVersion"].startswith(_pyproject_ray_version() + ".")
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for g in groups:
            pod = g["template"]["spec"]
            claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])]
            assert claims == (["repb-ray-shared"] if doc["kind"] == "RayCluster" else [])
            for c in pod["containers"]:
                assert c["image"].startswith(f"ghcr.io/your-org/repb-ray:{repb_ray.__version__}")
                if doc["kind"] == "RayCluster":
                    assert {"name": "shared", "mountPath": "/mnt/shared"} in c["volumeMounts"]
            if doc["kind"] == "RayJob":
                assert pod["serviceAccountName"] == "repb-ray"  # the bucket's credentials, from the cluster
        if doc["kind"] == "RayJob":
            entry = doc["spec"]["entrypoint"]
            assert "--set storage_path=s3://" in entry and "--tracking-uri http://repb-ray-mlflow:5000" in entry
            assert "/mnt/shared" not in entry
    text = open(os.path.join(CLUSTER, name)).read()
    assert "0.0.0.0" not in text and "LoadBalancer" not in text and "NodePort" not in text


def test_the_tracking_server_manifest_serves_the_jobs_inside_the_cluster_only():
    docs = {d["kind"]: d for d in _docs("mlflow.yaml")}
    assert docs["Service"]["metadata"]["name"] == "repb-ray-mlflow" and docs["Service"]["spec"]["type"] == "ClusterIP"
    assert docs["Service"]["spec"]["ports"][0]["port"] == 5000
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    args = " ".join(pod["containers"][0]["args"])
    assert "--backend-store-uri sqlite:////mlflow/mlflow.db" in args and '--host "$POD_IP"' in args
    assert docs["Deployment"]["spec"]["replicas"] == 1  # one writer of its SQLite store
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    text = open(os.path.join(CLUSTER, "mlflow.yaml")).read()
    assert "0.0.0.0" not in text and "LoadBalancer" not in text and "NodePort" not in text


def test_the_shared_claim_is_read_write_many_with_a_storage_class():
    (pvc,) = _docs("storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == "repb-ray-shared"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"]


def test_ray_up_file_passes_rays_validation_and_works_on_first_use():
    from ray.autoscaler._private.util import prepare_config, validate_config
    (cfg,) = _docs("ray-up-aws.yaml")
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs before touching AWS
    starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2 and "--dashboard-host=127.0.0.1" in starts
    assert "mlflow server --host" in starts and "0.0.0.0" not in starts  # the team's tracking server, VPC-internal
    assert cfg["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    assert cfg["docker"]["image"].startswith(f"ghcr.io/your-org/repb-ray:{repb_ray.__version__}")  # the data is in the image
    for node in cfg["available_node_types"].values():
        nc = node["node_config"]
        assert re.fullmatch(r"ami-[0-9a-f]{17}", nc["ImageId"])            # pinned
        assert nc["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}  # S3 for storage_path on every node


def test_the_image_pins_ray_carries_the_data_and_leaves_clutter_out():
    version = _pyproject_ray_version()
    dockerfile = open(os.path.join(CLUSTER, "Dockerfile")).read()
    assert f"rayproject/ray:{version}." in dockerfile and "FashionMNIST" in dockerfile
    assert "[ray,mlflow]" in dockerfile  # the extras a cluster run needs
    assert "/usr/share/datasets/fashion-mnist" in dockerfile
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    for entry in (".git", ".venv", "runs", "mlruns", "ray_results", "*.db"):
        assert entry in ignored


def test_the_cluster_readme_steps_need_nothing_a_fresh_cluster_lacks():
    readme = open(os.path.join(CLUSTER, "README.md")).read()
    assert "kubectl apply -f cluster/storage.yaml" in readme
    assert readme.index("kubectl apply -f cluster/storage.yaml") < readme.index("kubectl apply -f cluster/raycluster.yaml")
    assert readme.index("kubectl create secret generic repb-ray-auth") < readme.index("kubectl apply -f cluster/rayjob-train.yaml")
    assert "kubectl cp" not in readme  # the data is in the image
    # the RayJobs' prerequisites come first: the tracking server and the bucket's service account
    assert readme.index("kubectl apply -f cluster/mlflow.yaml") < readme.index("kubectl apply -f cluster/rayjob-train.yaml")
    assert readme.index("kubectl create serviceaccount repb-ray") < readme.index("kubectl apply -f cluster/rayjob-train.yaml")
    for name in glob.glob(os.path.join(CLUSTER, "*.yaml")):
        assert not re.search(r"auth_token\s*[:=]\s*['\"]?[0-9a-f]{16,}", open(name).read()), "no token in the repo"
