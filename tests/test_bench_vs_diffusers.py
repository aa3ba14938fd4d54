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


def test_fit_keeps_start_up_noise_out_of_the_per_step_cost():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_vs_diffusers import Run, fit

    # 5 s a step and 3 s to finish after the last step; the short run started slowly (first step at 25 s, a
    # cold disk cache), the long one quickly (12 s): 38 = 25 + 2*5 + 3 and 65 = 12 + 10*5 + 3. Whole wall
    # times would give (65 - 38) / 8 = 3.4 s a step.
    runs = [Run("sd1", "reference", 3, 38.0, 25.0, 1.0), Run("sd1", "reference", 11, 65.0, 12.0, 1.0)]
    assert fit(runs) == pytest.approx((5.0, 3.0))


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


def test_kohya_command_uses_its_defaults_and_an_offline_tokenizer(tmp_path):
    """The kohya job: its own LoRA module, the job's images as a dataset file, the job's tokenizer where its
    --tokenizer_cache_dir looks; ours on the same module set."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_vs_diffusers import KOHYA_TOKENIZER, KOHYA_UNET_TARGETS, Job, command, kohya_command

    from moslora_diffusion import toyworld

    model = toyworld.base_model_path()
    job = Job("sd1", 256, (3, 11))
    cmd = kohya_command("py", tmp_path / "sd-scripts", model, tmp_path / "images", tmp_path / "out", job, 11)
    flag = {k: v for k, v in zip(cmd, cmd[1:]) if k.startswith("--")}
    assert cmd[1].endswith("train_network.py") and flag["--network_module"] == "networks.lora"
    assert flag["--network_dim"] == "4" and flag["--max_train_steps"] == "11" and "--cache_latents" in cmd
    toml = Path(flag["--dataset_config"]).read_text()
    assert "resolution = 256" in toml and str(tmp_path / "images") in toml and "a photo of sks toy" in toml
    cached = Path(flag["--tokenizer_cache_dir"]) / KOHYA_TOKENIZER
    assert {p.name for p in cached.iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    ours = command("ours-moslora-kohya-set", "py", Path("ref.py"), model, tmp_path, tmp_path / "o", job, 11)
    assert ours[ours.index("--unet_targets") + 1] == KOHYA_UNET_TARGETS and "--no-signals" in ours
