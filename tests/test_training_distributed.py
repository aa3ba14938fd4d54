"""A real 2-process CPU run (gloo) under `accelerate launch`: ranks stay in sync, only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from moslora_diffusion.tiny import save_tiny_pipeline
from moslora_diffusion.training.checkpoint import state_digest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "train_dreambooth_moslora.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run(tmp_path):
    model = save_tiny_pipeline("sd1", tmp_path / "sd1")
    inst = tmp_path / "inst"
    inst.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (60 * i, 200, 90)).save(inst / f"subject{i}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(_free_port()), str(SCRIPT)]
    cmd += ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(inst)]
    cmd += ["--instance_prompt", "a sks blob", "--resolution", "32", "--output_dir", str(out), "--seed", "0"]
    cmd += [
        "--max_train_steps",
        "8",
        "--checkpointing_steps",
        "3",
        "--train_text_encoder",
        "--learning_rate",
        "1e-3",
    ]
    # the stop when learnt, agreed by both processes: any fit gain under 99 % ends the run at the 3rd validation
    cmd += [
        "--validation_steps",
        "1",
        "--stop_when_learned",
        "--stop_patience",
        "2",
        "--stop_min_improvement",
        "0.99",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stdout + proc.stderr
    assert log.count("learnt: 3/8 steps") == 1, "only the main process reports, both stop at step 3"

    ckpt = out / "checkpoint-3"
    digests = [json.loads((ckpt / f"rng-{rank}.json").read_text())["adapter_sha256"] for rank in (0, 1)]
    assert digests[0] == digests[1], "the two processes ended with different adapter weights"
    assert state_digest(load_file(str(ckpt / "adapter.safetensors"))) == digests[0]
    expected = {"README.md", "checkpoint-3", "loss_curve.png", "moslora_weights.safetensors",
                "pytorch_lora_weights.safetensors", "run.json", "signals.json", "signals_curve.png"}  # fmt: skip
    kept = json.loads((out / "signals.json").read_text())["kept_step"]
    assert {p.name for p in out.iterdir()} == expected | ({"last"} if kept != 3 else set())
    tensors = load_file(str(out / "moslora_weights.safetensors"))
    assert any(k.startswith("text_encoder.") for k in tensors) and any(k.startswith("unet.") for k in tensors)


@pytest.mark.slow
def test_two_machine_simulation_with_the_multi_node_config(tmp_path):
    """train_scripts/accelerate_configs/multi_node_ddp.yaml with two launchers (machine ranks 0 and 1) on this
    machine: one process per "machine", gloo over loopback. Both end with the same adapter."""
    model = save_tiny_pipeline("sd1", tmp_path / "sd1")
    inst = tmp_path / "inst"
    inst.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (90 * i, 200, 90)).save(inst / f"subject{i}.png")
    out = tmp_path / "out"
    port = str(_free_port())
    config = REPO / "train_scripts" / "accelerate_configs" / "multi_node_ddp.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        cmd += ["--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
        cmd += ["--main_process_port", port, "--mixed_precision", "no", str(SCRIPT)]
        cmd += ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(inst)]
        cmd += [
            "--instance_prompt",
            "a sks blob",
            "--resolution",
            "32",
            "--output_dir",
            str(out),
            "--seed",
            "0",
        ]
        cmd += ["--max_train_steps", "2", "--checkpointing_steps", "2", "--learning_rate", "1e-3"]
        log = open(tmp_path / f"machine{rank}.log", "w")  # files, not pipes: neither launcher can block
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log))
    logs = []
    for proc, log in procs:
        proc.wait(timeout=300)
        log.close()
        logs.append(Path(log.name).read_text())
        assert proc.returncode == 0, logs[-1][-4000:]
    assert sum(text.count("finished: 2/2 steps") for text in logs) == 1, "only the main process reports"
    ckpt = out / "checkpoint-2"
    digests = [json.loads((ckpt / f"rng-{rank}.json").read_text())["adapter_sha256"] for rank in (0, 1)]
    assert digests[0] == digests[1], "the two machines ended with different adapter weights"
    assert state_digest(load_file(str(ckpt / "adapter.safetensors"))) == digests[0]
