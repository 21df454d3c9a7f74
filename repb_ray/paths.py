"""Where repb_ray keeps its own files on this machine: $REPB_RAY_CACHE, else ~/.cache/repb_ray, else
(HOME missing or read-only) a folder of this user under the system's temporary directory. Runs
anywhere; creates nothing until asked."""

from __future__ import annotations

import os
import tempfile


def _usable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def cache_dir(*parts: str) -> str:
    """The cache folder (created), or a sub-folder of it."""
    env = os.environ.get("REPB_RAY_CACHE")
    candidates = [env] if env else []
    candidates += [os.path.join(os.path.expanduser("~"), ".cache", "repb_ray"),
                   os.path.join(tempfile.gettempdir(), f"repb_ray-{os.getuid()}")]
    for root in candidates:
        if root and _usable(root):
            path = os.path.join(root, *parts)
            if _usable(path):
                return path
    raise OSError(f"no writable folder for repb_ray's cache (tried {', '.join(c for c in candidates if c)}); set "
                  "REPB_RAY_CACHE to a writable folder")
