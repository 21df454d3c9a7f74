"""code_version: the package's version, commit and a digest that tells two edits of its files apart."""

import pytest

from repb_ray._version import __version__
from repb_ray.code_version import code_version, source_digest

pytestmark = pytest.mark.unit


def test_the_digest_follows_the_source_files_and_nothing_else(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    first = source_digest(str(tmp_path))
    assert len(first) == 16 and source_digest(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.py").write_text("cached")
    assert source_digest(str(tmp_path)) == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    edited = source_digest(str(tmp_path))
    assert edited != first
    (tmp_path / "pkg" / "a.py").rename(tmp_path / "pkg" / "c.py")
    assert source_digest(str(tmp_path)) not in (first, edited)  # a file's name is part of the code


def test_code_version_names_the_version_commit_and_digest():
    v = code_version()
    assert v["version"] == __version__ and v["source_digest"] == source_digest() and v["git_commit"]
