"""benchmarks/bench_vs_diffusers.py end to end on the toy job, with a stand-in for diffusers' script (the real
one is not part of the pip package): timing, the first-step detection, the fit and the ratio table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = """
import sys, time
n = int(sys.argv[sys.argv.index("--max_train_steps") + 1])
time.sleep(0.5)  # start-up
for i in range(n + 1):
    sys.stderr.write(f"\\rSteps: {100 * i // n}%| {i}/{n} [loss=0.1]")
    sys.stderr.flush()
    time.sleep(0.05)
"""


def test_fit_separates_per_step_cost_from_start_up():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_vs_diffusers import Run, fit

    runs = [Run("sd1", "reference", 3, 30.0, 20.0, 1.0), Run("sd1", "reference", 11, 70.0, 20.0, 1.0)]
    assert fit(runs) == pytest.approx((5.0, 15.0))  # 30 = 15 + 3*5, 70 = 15 + 11*5


@pytest.mark.slow
def test_toy_job_against_a_stand_in_reference(tmp_path):
    stand_in = tmp_path / "train_dreambooth_lora.py"
    stand_in.write_text(STAND_IN)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_vs_diffusers.py"), "--reference-script", str(stand_in),
         "--jobs", "toy", "--steps", "2,6", "--no-docs", "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| toy 32 px |")]
    scripts = [line.split("|")[2].strip() for line in lines]
    assert scripts[:3] == ["reference", "ours-lora", "ours-moslora"]
    reference = [c.strip() for c in lines[0].split("|")[1:-1]]
    first_step, per_step = float(reference[2]), float(reference[3])
    assert 0.4 < first_step < 5.0 and 0.03 < per_step < 0.5  # the stand-in: 0.5 s start-up, 0.05 s a step
    assert any("reference / ours-moslora" in line for line in lines)
