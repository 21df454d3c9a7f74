"""The code a process runs: the package's version, its git commit when it runs from a checkout, and a
digest of its own source files (which tells apart two edits of one commit). Runs in any process."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess

from repb_ray._version import __version__

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def git_commit() -> str:
    """The commit of the checkout this package is imported from ("unknown" outside one)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=PACKAGE)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_digest(root: str = PACKAGE) -> str:
    """sha256 (16 hex digits) over the package's .py files: their paths under `root` and their bytes."""
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read() + b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """This process's code, as recorded in summary.json (read once: the files a process imported at its start)."""
    return {"version": __version__, "git_commit": git_commit(), "source_digest": source_digest()}
