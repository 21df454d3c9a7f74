"""The documentation: the README is short and every page it left has a place in the site; every code
block a page presents as runnable (`<!-- runnable: NAME -->` before it) is run by a named test, and
the quick start runs here as a script."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, doc_block, runnable_blocks

pytestmark = pytest.mark.unit

# every runnable block, and the test file that runs it (through helpers.doc_block)
RUN_BY = {"quickstart": "tests/unit/test_docs.py", "task": "tests/ray/test_tasks.py"}


def test_the_readme_is_read_in_two_minutes():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) < 10_000


def test_every_page_is_in_the_site_and_every_readme_link_resolves():
    with open(os.path.join(ROOT, "mkdocs.yml")) as fh:
        nav = yaml.safe_load(fh)["nav"]
    pages = {next(iter(item.values())) for item in nav}
    on_disk = {f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")}
    assert pages == on_disk
    readme = open(os.path.join(ROOT, "README.md")).read()
    links = re.findall(r"\]\(([^)#]+\.md)\)", readme)
    assert links and all(os.path.exists(os.path.join(ROOT, link)) for link in links)
    assert {f"docs/{p}" for p in pages} - {"docs/index.md", "docs/architecture.md"} <= set(links)


def test_every_runnable_block_has_its_test():
    assert set(runnable_blocks()) == set(RUN_BY)
    for name, test_file in RUN_BY.items():
        assert f'doc_block("{name}")' in open(os.path.join(ROOT, test_file)).read(), (name, test_file)


@pytest.mark.slow
def test_the_quickstart_runs_as_printed(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(doc_block("quickstart"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "epoch 1: trained 2000 of 2000" and len(lines) == 6
    kept = [int(re.search(r"trained (\d+)", line).group(1)) for line in lines[:5]]
    assert all(k < 2000 for k in kept[1:])   # epochs 2.. are pruned
    assert re.fullmatch(r"pruned \d+% of the sample-steps", lines[-1])
