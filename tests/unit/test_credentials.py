"""Secrets kept out of run state by construction: a literal secret in a config is refused naming the key
and the fix, a reference ({env: NAME}) is kept and resolved only where the task is built, and a tracking
URI's user:password (split at the last @) never stays in a config."""

import os

import pytest

from repb_ray import credentials
from repb_ray.config import Config
from repb_ray.errors import ConfigError
from repb_ray.redact import redact_text
from repb_ray.tasks.loader import instantiate
from repb_ray.train import run_home

pytestmark = pytest.mark.unit  # in-process, seconds


@pytest.mark.parametrize("key", ["hf_token", "api_key", "password", "passwd", "db_pwd", "client_secret", "key", "auth",
                                 "sas", "credential", "hfToken", "apiKey", "AWS_SECRET_ACCESS_KEY", "auth-header"])
def test_secret_looking_keys_are_recognised(key):
    assert credentials.is_secret_key(key)


@pytest.mark.parametrize("key", ["max_tokens", "tokenizer", "monkey", "keys", "size", "author", "passes", "sash"])
def test_ordinary_keys_are_not(key):
    assert not credentials.is_secret_key(key)


@pytest.mark.parametrize("where", ["task_args", "tags", "policy_args"])
def test_a_literal_secret_in_a_config_is_refused_at_any_depth(where):
    value = {"hub": {"hf_token": "hf_abcdefgh123"}}
    with pytest.raises(ConfigError, match=rf"{where}.hub.hf_token looks like a secret.*hf_token: {{env: HF_TOKEN}}"):
        Config(**{where: value})


def test_a_secret_by_reference_is_kept_and_resolved_only_where_the_task_is_built(monkeypatch_env):
    ref = {"env": "REPB_TEST_TOKEN"}
    cfg = Config(task="synthetic", task_args={"size": 64}, tags={"api_key": ref}, name="r")
    before = run_home.fingerprint(cfg)
    monkeypatch_env["REPB_TEST_TOKEN"] = "rotated-value-1"
    assert run_home.fingerprint(cfg) == before  # rotating the secret is the same run
    assert "rotated-value-1" not in repr(cfg.to_dict()) and run_home.identity(cfg) == run_home.identity(cfg)
    assert credentials.resolve({"a": ref, "b": [ref], "c": 1}) == {"a": "rotated-value-1", "b": ["rotated-value-1"],
                                                                    "c": 1}
    del monkeypatch_env["REPB_TEST_TOKEN"]
    with pytest.raises(ConfigError, match="environment variable REPB_TEST_TOKEN is not set"):
        credentials.resolve(ref)
    with pytest.raises(ConfigError, match="REPB_TEST_TOKEN is not set"):
        instantiate("synthetic", {"size": ref})


@pytest.fixture
def monkeypatch_env():
    """os.environ, restored afterwards."""
    saved = dict(os.environ)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("password", ["Winter@2025!", "it's\"<>", "plain-pass-77"])
def test_a_tracking_uri_loses_its_credentials_at_parse_time(password, monkeypatch_env):
    from urllib.parse import quote
    uri = f"https://alice:{password}@mlflow.corp:5000/prefix"
    if "'" in password:
        uri = f"https://alice:{quote(password, safe='')}@mlflow.corp:5000/prefix"
    cfg = Config(tracking_uri=uri)
    assert cfg.tracking_uri == "https://mlflow.corp:5000/prefix"
    assert password not in repr(cfg.to_dict()) and "alice" not in repr(cfg.to_dict())
    assert credentials.tracking_credentials() == {"MLFLOW_TRACKING_USERNAME": "alice",
                                                  "MLFLOW_TRACKING_PASSWORD": password}
    assert password not in redact_text(f"failed: {password} at {uri}")
    credentials.apply_tracking_credentials()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == password


def test_redaction_masks_a_password_holding_at_signs_and_quotes():
    for uri, secret in (("https://alice:Winter@2025!@mlflow.corp", "2025!"),
                        ("http://bob:pa\"ss'<x>@h:5000/api", "<x>")):
        out = redact_text(f"error talking to {uri}: 502")
        assert secret not in out and out.startswith("error talking to ") and out.endswith(": 502")


def test_tilde_paths_are_expanded_never_a_folder_named_tilde():
    cfg = Config(output_dir="~/repb-out", storage_path="~/repb-store")
    assert cfg.output_dir == os.path.expanduser("~/repb-out") and cfg.storage_path == os.path.expanduser("~/repb-store")
