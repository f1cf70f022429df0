"""Every Python example of the README runs as written (each in a fresh interpreter) and prints sensible metrics."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if README.exists() else []


@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index):
    pytest.importorskip("faiss")
    result = subprocess.run([sys.executable, "-c", EXAMPLES[index]], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    maps = [float(v) for v in re.findall(r"'mean_average_precision_at_r_level0': ([0-9.]+)", result.stdout)]
    hits = [float(v) for v in re.findall(r"'precision_at_1_level0': ([0-9.]+)", result.stdout)]
    assert maps and hits and min(hits) > 0.6 and min(maps) > 0.1, result.stdout[-2000:]


def test_readme_has_the_examples_and_stays_short():
    assert len(EXAMPLES) >= 2
    assert len(README.read_text().splitlines()) <= 250
