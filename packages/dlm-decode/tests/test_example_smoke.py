"""The reproduction script at toy scale (slow: trains for a few seconds and decodes with every arm)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "dlm_arithmetic.py"


@pytest.mark.slow
def test_dlm_arithmetic_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert list(results) == ["step 10", "step 30 (final)"]
    for arms in results.values():
        assert arms["LLaDA (baseline)"]["nfe"] == 12.0
        assert arms["LLaDA, argmax fill at half the steps"]["nfe"] == 6.0
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in arms.values())
