"""The entry points shorten OpenMP's spin from before torch loads, so that idle threads sleep instead of holding
cores; a user's choice is kept, and the library imported on its own changes nothing about OpenMP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moslora_diffusion.process_env import OPENMP_SPIN, OPENMP_WAIT_VARIABLES

ROOT = Path(__file__).resolve().parents[1]

# Records the OpenMP waiting variables at the moment torch is first imported (when libgomp reads them), runs
# `START`, then makes sure torch is loaded and prints what was recorded.
_SPY = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(",".join(f"{k}={os.environ[k]}" for k in WAIT if k in os.environ) or "unset")
        return None
sys.meta_path.insert(0, Spy())
WAIT = VARIABLES
START
import torch
print(seen[0])
"""
ENTRY_POINTS = {
    "training script": 'import runpy; runpy.run_path("train_scripts/train_dreambooth_moslora.py", run_name="probe")',
    "CLI": "from moslora_diffusion.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "web UI": "from moslora_diffusion.webui.server import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
}


def _run(code: str, **env: str) -> str:
    code = code.replace("VARIABLES", repr(OPENMP_WAIT_VARIABLES))
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_WAIT_VARIABLES}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**clean, "HF_HUB_OFFLINE": "1", **env})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()[-1]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_entry_points_shorten_the_spin_before_torch_loads(entry):
    assert _run(_SPY.replace("START", ENTRY_POINTS[entry])) == "=".join(OPENMP_SPIN)


@pytest.mark.parametrize("choice", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}])
def test_a_users_openmp_choice_is_kept(choice):
    expected = ",".join(f"{k}={v}" for k, v in choice.items())
    assert _run(_SPY.replace("START", ENTRY_POINTS["CLI"]), **choice) == expected


def test_importing_the_library_leaves_openmp_waiting_alone():
    assert _run(_SPY.replace("START", "import moslora_diffusion")) == "unset"


# CPU time the pool's worker threads spend per parallel region when the main thread pauses 2 ms between
# regions: a worker spinning as long as libgomp's default (or forever, ACTIVE) burns the pause; with the
# entry points' short spin it sleeps.
_WORKER_CPU = """
import sys, time
START
import torch
torch.set_num_threads(2)
x = torch.ones(1_000_000)
for _ in range(5):
    x.add_(1)
t0, c0 = time.thread_time(), time.process_time()
for _ in range(100):
    x.add_(1)
    time.sleep(0.002)
print(((time.process_time() - c0) - (time.thread_time() - t0)) / 100)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: a spinning thread has no core of its own")
def test_the_entry_points_setting_makes_idle_threads_sleep():
    start = "from moslora_diffusion.process_env import prepare_entry_point; prepare_entry_point()"
    short = float(_run(_WORKER_CPU.replace("START", start)))
    spinning = float(_run(_WORKER_CPU.replace("START", ""), OMP_WAIT_POLICY="ACTIVE"))
    assert spinning > 0.001  # the workers spun through most of each 2 ms pause
    assert short < 0.25 * spinning
