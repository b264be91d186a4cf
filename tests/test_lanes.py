"""The two test lanes of README.md: CI runs every test; `-m "not slow"` is the fast lane. The marker
is declared and strict, so a misspelt one is an error rather than a slow test in the fast lane."""

import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def collect(folder: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(PYPROJECT), "--rootdir", str(folder),
                           "--collect-only", "-q", "-p", "no:cacheprovider", *flags, str(folder)],
                          capture_output=True, text=True, timeout=60)


def test_the_fast_lane_leaves_out_slow_tests_and_a_misspelt_marker_is_an_error(tmp_path):
    (tmp_path / "test_lanes_example.py").write_text(
        "import pytest\n\n@pytest.mark.slow\ndef test_long():\n    pass\n\ndef test_short():\n    pass\n")
    fast = collect(tmp_path, "-m", "not slow")
    assert "test_short" in fast.stdout and "test_long" not in fast.stdout and "1 deselected" in fast.stdout
    assert "test_long" in collect(tmp_path).stdout  # CI's lane: everything
    (tmp_path / "test_lanes_example.py").write_text("import pytest\n\n@pytest.mark.slwo\ndef test_long():\n    pass\n")
    misspelt = collect(tmp_path, "-m", "not slow")
    assert misspelt.returncode != 0 and "'slwo' not found in `markers`" in misspelt.stdout + misspelt.stderr


def test_the_readme_gives_both_lanes():
    readme = (PYPROJECT.parent / "README.md").read_text()
    assert '. .venv/bin/activate && python -m pytest -q\n' in readme  # CI's command (.ci/run)
    assert 'python -m pytest -q -m "not slow"' in readme
