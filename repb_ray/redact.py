"""One redaction for every byte repb_ray writes or logs: credentials in URIs (user:password@, and the
usual secret query parameters such as Azure's `sig` or S3's `X-Amz-Signature`) become ***, in plain
strings, in text that merely contains a URI (third-party error messages, log lines) and in nested
configs. Secrets seen once are remembered by the process, so they are also hidden where they show
up outside a URI. No Ray, no torch; runs in every process."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote

MASK = "***"
# query parameters whose values are secrets: exact names, then names containing one of the words
SECRET_PARAMS = ("sig", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "code")
SECRET_WORDS = ("token", "password", "passwd", "secret", "key", "signature", "credential")

# userinfo runs to the last `@` before the path (as urllib.parse splits it): a password may hold @ ' " < >
_URI = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s?#]*@)?(?P<rest>[^\s'\"<>]*)")
_QUERY = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;#\s'\"]+)=(?P<value>[^&;#\s'\"]*)")
_KNOWN: set[str] = set()  # secrets seen in this process (and their percent-decoded forms)


def is_secret_param(name: str) -> bool:
    n = unquote(name).lower()
    return n in SECRET_PARAMS or any(w in n for w in SECRET_WORDS)


def remember(secret: str) -> None:
    """Mask `secret` (and its percent-decoded form) wherever this process writes or logs it."""
    _remember(secret)


def _remember(secret: str) -> None:
    for s in (secret, unquote(secret)):
        if len(s) >= 4:  # shorter strings would mask ordinary text; they are still masked in URIs
            _KNOWN.add(s)


def _redact_uri(m: re.Match) -> str:
    userinfo, rest = m.group("userinfo"), m.group("rest")
    if userinfo:
        cred = userinfo[:-1]
        _remember(cred.split(":", 1)[1] if ":" in cred else cred)
        userinfo = MASK + "@"

    def query(q: re.Match) -> str:
        if not is_secret_param(q.group("name")) or not q.group("value"):
            return q.group(0)
        _remember(q.group("value"))
        return f"{q.group('lead')}{q.group('name')}={MASK}"
    if "?" in rest or ";" in rest or "&" in rest:
        rest = _QUERY.sub(query, rest)
    return m.group("scheme") + (userinfo or "") + rest


def redact_text(text: str) -> str:
    """`text` with every URI's credentials and every remembered secret replaced by ***."""
    if not isinstance(text, str) or not text:
        return text
    out = _URI.sub(_redact_uri, text) if "://" in text else text
    for secret in sorted(_KNOWN, key=len, reverse=True):
        if secret in out:
            out = out.replace(secret, MASK)
    return out


def redact(value):
    """A copy of `value` (str, dict, list, tuple, anything else as is) with secrets masked at any depth."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def has_secret(value) -> bool:
    """Whether redaction would change `value`."""
    return redact(value) != value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record it sees (message and arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: leave it to the handler
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_filter(*loggers: str) -> None:
    """Mask secrets in the records of the named loggers (the root logger by default) and of every
    handler of the root logger (records of other loggers pass through those)."""
    f = RedactingFilter()
    for name in loggers or ("",):
        log = logging.getLogger(name)
        if not any(isinstance(x, RedactingFilter) for x in log.filters):
            log.addFilter(f)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(x, RedactingFilter) for x in handler.filters):
            handler.addFilter(f)
