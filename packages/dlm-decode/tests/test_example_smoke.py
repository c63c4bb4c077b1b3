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
        # every strategy at the same length; '=' is forced, so 11 masks: NAP's k per step takes
        # ceil(11 / k) forwards; SOAR beams feed B sequences per step once they branch
        for k, nfe in ((1, 11.0), (2, 6.0), (4, 3.0)):
            assert arms[f"Parallel-forced (NAP), {k} token(s)/step"]["nfe"] == nfe
        for b in (2, 4):
            beams = arms[f"SOAR beams (paper), B={b}"]
            assert beams["nfe"] <= beams["sequence_evals"] <= b * beams["nfe"]
        for name in (
            "Fast-dLLM threshold 0.9 + prefix cache",
            "Elastic-Cache gamma 1 (always refresh), window 4",
            "Elastic-Cache gamma 0.9, window 16 (default)",
        ):
            assert 1.0 <= arms[name]["nfe"] <= 11.0
        assert all(0.0 < r["row_wall_s"] <= r["wall_s"] + 1e-9 for r in arms.values())
