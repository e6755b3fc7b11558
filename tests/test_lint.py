"""The code style CI enforces: ruff with the configuration in pyproject.toml ([tool.ruff]), over the whole tree
(package, tests, data scripts and the source notebooks)."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, cwd=ROOT)
    assert "No module named ruff" not in proc.stderr, "ruff is in the test extra: pip install -e '.[test]'"
    assert proc.returncode == 0, proc.stdout + proc.stderr
