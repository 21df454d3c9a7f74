"""One redaction for everything written or logged: credentials in URIs (user:password@, secret query
parameters), in plain strings, in third-party error text, at any depth of a config, in log records."""

import logging

import pytest

from repb_ray.redact import RedactingFilter, has_secret, redact, redact_text

pytestmark = pytest.mark.unit  # in-process, seconds


@pytest.mark.parametrize("text,secret", [
    ("http://alice:pa55word-1@127.0.0.1:5000", "pa55word-1"),
    ("API request to https://bob:t0psecret@mlflow.example.com/api/2.0/runs failed with 502", "t0psecret"),
    ("https://ghp_abcdef123456@github.com/org/repo.git", "ghp_abcdef123456"),
    ("https://acct.blob.core.windows.net/c/f.parquet?sv=2022-11-02&sr=b&sig=AbC%2Bd3fG%3D&se=2030", "AbC%2Bd3fG%3D"),
    ("s3://bucket/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAEXAMPLE%2F2026&X-Amz-Signature=deadbeef99",
     "deadbeef99"),
    ("s3://bucket/k?X-Amz-Credential=AKIAEXAMPLE%2F2026", "AKIAEXAMPLE"),
    ("gs://b/x?token=tok-123456&alt=media", "tok-123456"),
    ("postgresql://u:pw-998877@db:5432/mlflow", "pw-998877"),
    ("http://h/x?password=hunter22&user=me", "hunter22"),
    ("http://h/x?api_key=k-778899", "k-778899"),
    ("http://h/x?client_secret=cs-445566", "cs-445566"),
])
def test_secrets_in_uris_are_masked_wherever_the_uri_stands(text, secret):
    out = redact_text(text)
    assert secret not in out and "***" in out
    assert redact_text(f"error: {text} (retrying)").startswith("error: ")


def test_uris_without_secrets_stay_byte_for_byte():
    for uri in ("sqlite:////abs/path/mlflow.db", "http://127.0.0.1:5000", "s3://bucket/prefix/run-1",
                "file:///tmp/a?x=1&y=2", "https://h/x?sv=2022&se=2030", "no uri here"):
        assert redact_text(uri) == uri and not has_secret(uri)


def test_a_secret_seen_once_is_masked_outside_uris_too():
    redact_text("http://carol:Sup3r-S3cret-Value@h:1")
    assert redact_text("Basic auth failed for Sup3r-S3cret-Value") == "Basic auth failed for ***"
    assert redact_text("Sup3r%2DS3cret") == "Sup3r%2DS3cret"  # only what was seen


def test_configs_are_redacted_at_any_depth():
    cfg = {"tracking_uri": "http://a:secret-111@h", "base": {"task_args": {"path": "s3://b/x?sig=abc-222"},
                                                             "list": ["https://u:pw-333@h/p", 3]}, "epochs": 3}
    out = redact(cfg)
    text = repr(out)
    assert "secret-111" not in text and "abc-222" not in text and "pw-333" not in text
    assert out["epochs"] == 3 and out["base"]["list"][1] == 3 and cfg["tracking_uri"].startswith("http://a:")


def test_log_records_are_masked():
    record = logging.LogRecord("mlflow", logging.WARNING, __file__, 1, "retrying %s", ("http://d:pw-4455@h/api",),
                               None)
    assert RedactingFilter().filter(record)
    assert "pw-4455" not in record.getMessage() and "***@h/api" in record.getMessage()
