"""benchmarks/quality.py end to end in its --quick mode (2 seeds, 500 samples a run) on digits and the class tree."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "quality.py")


@pytest.mark.parametrize("extra", [[], ["--scale-stage"]])
def test_quick_tables_pair_every_method_with_pml(tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, os.path.abspath(SCRIPT), "--quick", "--datasets", "digits,tree", *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    name = "quality_scale" if extra else "quality"
    text = (tmp_path / "runs" / "quality_quick" / f"{name}.md").read_text()
    report = json.loads((tmp_path / "runs" / "quality_quick" / f"{name}.json").read_text())
    methods = report["methods"]
    assert len(methods) == 6 and sum(m["method"] == "chest" for m in methods.values()) == 4
    marked = [n for n in methods if n.endswith("(selected)" if extra else "(default)")]
    assert len(marked) == 1
    # 6 methods × 2 dims × 2 datasets × 2 seeds, plus the stability rows (3 methods × 2 other learning rates)
    assert len(report["runs"]) == 6 * 2 * 2 * 2 + 3 * 2 * 2 * 2
    paired = text.split("paired difference against pml's SoftTripleLoss")[1]
    for method in methods:
        if method != "pml SoftTripleLoss":
            assert f"| {method} |" in paired
    assert "### Verdict" in text and "Goal (ΔMAP@R ≥ 0" in text
