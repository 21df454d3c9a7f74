"""Secrets kept out of run state by construction: a config value under a secret-looking key is
refused unless it is a reference (`{env: HF_TOKEN}`), resolved only where it is used; a tracking
URI's user:password is split off at parse time (at the last `@`, as urllib.parse splits it) and
handed to MLflow through its own variables, in the processes that track only. No Ray, no torch."""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

from repb_ray.errors import ConfigError

SECRET_WORDS = frozenset(("token", "password", "passwd", "pwd", "secret", "apikey", "key", "auth", "sas",
                          "credential", "credentials"))
MLFLOW_USER, MLFLOW_PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_TRACKING: dict[str, str] = {}  # this process's MLflow credentials, taken out of a tracking URI


def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret: one of its words (snake, kebab, dotted or camel case) is
    token, password, passwd, pwd, secret, key, auth, sas or credential(s) (api_key, hfToken, SAS)."""
    if not isinstance(key, str):
        return False
    words = [w.lower() for w in _WORDS.findall(key)]
    return any(w in SECRET_WORDS for w in words) or "apikey" in key.lower().replace("_", "").replace("-", "")


def is_reference(value) -> bool:
    """`{env: NAME}`: a secret given by the name of the environment variable that holds it."""
    return isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str) and bool(value["env"])


def check_no_secrets(value, path: str) -> None:
    """Refuse a literal secret anywhere in a config mapping (at any depth), naming the key and the fix."""
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            if is_secret_key(k) and not is_reference(v) and v not in (None, "", False) and not isinstance(v, dict):
                raise ConfigError(f"{where} looks like a secret, and a config is written to run records, MLflow params "
                                  f"and the checkpoints' bucket; give it by reference instead: {k}: {{env: "
                                  f"{_env_name(k)}}} (and export {_env_name(k)}), or read it in your task from the "
                                  "environment or a file")
            check_no_secrets(v, where)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_no_secrets(v, f"{path}[{i}]")


def _env_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).upper()


def resolve(value):
    """`value` with every `{env: NAME}` replaced by the variable's value (where the secret is used:
    the task's constructor). A missing variable is a ConfigError naming it."""
    if is_reference(value):
        name = value["env"]
        if name not in os.environ:
            raise ConfigError(f"the environment variable {name} is not set in this process (a config refers to it "
                              f"with {{env: {name}}}); export it where the job runs (on a cluster: the job's "
                              "runtime_env env_vars)")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v) for v in value]
    return value


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without user:password, the user, the password): split at the last `@` of the authority."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    host = parts.netloc.rpartition("@")[2]
    user, password = parts.username, parts.password
    return (urlunsplit(parts._replace(netloc=host)), unquote(user) if user is not None else None,
            unquote(password) if password is not None else None)


def take_tracking_credentials(uri):
    """The tracking URI without its credentials; the credentials are kept in this process for MLflow
    (apply_tracking_credentials), never in a config."""
    if not isinstance(uri, str) or "://" not in uri:
        return uri
    clean, user, password = split_credentials(uri)
    if user is not None:
        _TRACKING[MLFLOW_USER] = user
    if password is not None:
        _TRACKING[MLFLOW_PASSWORD] = password
    if user is not None or password is not None:
        from repb_ray.redact import remember
        for secret in (password, user):
            if secret:
                remember(secret)
    return clean


def tracking_credentials() -> dict[str, str]:
    """The MLflow credentials this process took from a URI (for a trial's driver, through the object store)."""
    return dict(_TRACKING)


def apply_tracking_credentials(creds: dict[str, str] | None = None) -> None:
    """Hand the credentials to MLflow's client through its own variables, in this process (called
    where MLflow is used, after any local Ray has started, so no Ray process inherits them)."""
    for key, value in (creds if creds is not None else _TRACKING).items():
        os.environ[key] = value
        _TRACKING[key] = value
