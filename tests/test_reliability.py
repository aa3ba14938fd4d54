"""Nothing lost, nothing silent: each fault and bad input of docs/reliability.md, fed on purpose.

Every test here failed on the code before the fix it names (issue "Nothing lost, nothing silent").
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from moslora_diffusion.errors import (
    AdapterMismatchError,
    MoSLoraFormatError,
    NonFiniteLossError,
    OutputWriteError,
    RequestError,
    TrainConfigError,
)
from moslora_diffusion.formats import (
    ComponentConfig,
    MoSLoraFile,
    export_adapter,
    kohya_unsupported_modules,
    load_moslora_file,
)
from moslora_diffusion.formats.inspect import describe_adapter_file
from moslora_diffusion.training import checkpoint as ckpt
from moslora_diffusion.training import parse_args, run_folder, run_training, validate_config
from tests.cli_support import run_cli
from tests.pipeline_support import load_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("subject")
    for i in range(2):
        Image.new("RGB", (32, 32), (40 + 90 * i, 180, 60)).save(folder / f"s{i}.png")
    return folder


def _argv(tiny_dirs, subject, out: Path, *extra: str) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(tiny_dirs["sd1"]), "--instance_data_dir", str(subject),
        "--instance_prompt", "a sks blob", "--output_dir", str(out), "--resolution", "32", "--seed", "0",
        "--learning_rate", "1e-3", *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------------------ 1. non-finite numbers


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--learning_rate", "nan"),
        ("--learning_rate", "inf"),
        ("--lora_alpha", "nan"),
        ("--lora_alpha", "inf"),
        ("--noise_offset", "nan"),
        ("--max_grad_norm", "nan"),
        ("--prior_loss_weight", "nan"),
        ("--snr_gamma", "nan"),
        ("--adam_beta1", "5"),
        ("--adam_epsilon", "0"),
        ("--text_encoder_lr", "-1"),
    ],
)
def test_non_finite_or_out_of_range_floats_refused_before_loading(tiny_dirs, subject, tmp_path, flag, value):
    with pytest.raises(TrainConfigError, match=flag):
        validate_config(parse_args([*_argv(tiny_dirs, subject, tmp_path / "out"), flag, value]))
    assert not (tmp_path / "out").exists()  # nothing written


def test_checkpoint_named_after_broken_weights_is_really_good(tiny_dirs, subject, tmp_path, monkeypatch):
    """A step that breaks the weights with a finite loss stops the run; the checkpoint it names is finite."""
    from moslora_diffusion.training import loop

    real = loop.make_optimizer

    def poisoned(*args, **kwargs):
        opt = real(*args, **kwargs)
        calls = []

        def after_step(optimizer, *_):
            calls.append(1)
            if len(calls) == 2:  # the second step writes NaN into every adapter weight
                with torch.no_grad():
                    for group in optimizer.param_groups:
                        for p in group["params"]:
                            p.fill_(float("nan"))

        opt.register_step_post_hook(after_step)
        return opt

    monkeypatch.setattr(loop, "make_optimizer", poisoned)
    out = tmp_path / "out"
    argv = _argv(tiny_dirs, subject, out, "--max_train_steps", "3", "--checkpointing_steps", "1")
    with pytest.raises(NonFiniteLossError, match=r"adapter weights became NaN.*step 2.*checkpoint-1") as info:
        run_training(parse_args(argv))
    assert info.value.last_checkpoint.endswith("checkpoint-1")
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1"]
    assert ckpt.checkpoint_problem(out / "checkpoint-1") is None
    from safetensors.torch import load_file

    assert all(
        torch.isfinite(t).all() for t in load_file(str(out / "checkpoint-1" / "adapter.safetensors")).values()
    )


# ------------------------------------------------------------------------------ 2. silent black images


def _native(path: Path, alpha: object = 4.0, b_scale: float = 1.0, a_scale: float = 1.0) -> Path:
    """A one-module native file whose moslora_config says ``lora_alpha = alpha`` (JSON may hold NaN/Infinity)."""
    g = torch.Generator().manual_seed(0)
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = {
        f"{key}.lora_A.weight": torch.randn(4, 64, generator=g) * a_scale,
        f"{key}.lora_mixer.weight": torch.randn(4, 4, generator=g),
        f"{key}.lora_B.weight": torch.randn(64, 4, generator=g) * b_scale,
    }
    config = {"unet": {"r": 4, "lora_alpha": alpha, "target_modules": ["to_q"]}}
    meta = {
        "format": "moslora",
        "moslora_version": "1",
        "moslora_config": json.dumps(config),  # json writes NaN / Infinity tokens, as a careless tool would
        "base_model": json.dumps({"architecture": "sd1"}),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("alpha", "b_scale", "message"),
    [
        (float("nan"), 1.0, "lora_alpha must be a finite number"),
        (float("inf"), 1.0, "lora_alpha must be a finite number"),
        (1e38, 1.0, "overflow"),
        (4.0, 1e30, "overflow"),
        (4.0, 1e38, "NaN or infinite values"),  # beyond float32 already: the tensor itself is inf
    ],
)
def test_non_finite_scale_or_fold_refused_everywhere(tiny_dirs, tmp_path, alpha, b_scale, message):
    path = _native(tmp_path / "bad.safetensors", alpha, b_scale)
    for read in (load_moslora_file, describe_adapter_file):
        with pytest.raises(MoSLoraFormatError, match=message) as info:
            read(path)
        assert "bad.safetensors" in str(info.value)
    with pytest.raises(MoSLoraFormatError, match=message):
        export_adapter(path, tmp_path / "exported.safetensors", "kohya")
    assert not (tmp_path / "exported.safetensors").exists()
    pipe = load_tiny(tiny_dirs, "sd1")
    with pytest.raises(MoSLoraFormatError, match=message):
        pipe.load_moslora_weights(str(path))
    assert pipe.get_list_adapters() == {}


def test_web_ui_refuses_instead_of_rendering_black(tiny_dirs, tmp_path):
    from moslora_diffusion.webui.engine import Engine, GenerationRequest

    adapters = tmp_path / "adapters"
    adapters.mkdir()
    _native(adapters / "black.safetensors", 1e38)
    engine = Engine(load_tiny(tiny_dirs, "sd1"), tiny_dirs["sd1"], adapters, tmp_path / "outputs")
    req = GenerationRequest(prompt="a", steps=1, width=32, height=32, adapters=[("black.safetensors", 1.0)])
    with pytest.raises(MoSLoraFormatError, match="overflow"):
        engine.generate(req)
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.png"))


def test_fp16_export_that_would_overflow_is_refused(tmp_path):
    path = _native(tmp_path / "big.safetensors", 4.0, 1e-5, a_scale=1e5)  # sane change, A beyond fp16
    with pytest.raises(MoSLoraFormatError, match="does not fit in torch.float16"):
        export_adapter(path, tmp_path / "half.safetensors", "diffusers", dtype="fp16")
    export_adapter(path, tmp_path / "full.safetensors", "diffusers")  # fp32 holds it


# ------------------------------------------------------------------------------ 3. bad numbers


@pytest.mark.parametrize(("flag", "value"), [("--rank", "100000"), ("--repeats", "1000000000")])
def test_huge_numbers_refused_before_loading(tiny_dirs, subject, tmp_path, flag, value):
    with pytest.raises(TrainConfigError, match=f"{flag} must be between"):
        validate_config(parse_args([*_argv(tiny_dirs, subject, tmp_path / "o"), flag, value]))


def test_rank_above_smallest_targeted_layer_and_unknown_targets(tiny_dirs, subject, tmp_path, monkeypatch):
    from moslora_diffusion.training import models

    monkeypatch.setattr(models, "add_moslora_adapter", lambda *a, **k: pytest.fail("adapter injected"))
    with pytest.raises(TrainConfigError, match=r"--rank 64 is larger than the smallest targeted layer.*32"):
        run_training(parse_args([*_argv(tiny_dirs, subject, tmp_path / "a"), "--rank", "64"]))
    with pytest.raises(
        TrainConfigError, match="--unet_targets: no Linear or Conv2d layer .* 'no_such_layer'"
    ):
        run_training(
            parse_args([*_argv(tiny_dirs, subject, tmp_path / "b"), "--unet_targets", "to_q,no_such_layer"])
        )


def test_script_reports_toolkit_errors_in_one_line(tiny_dirs, subject, tmp_path):
    argv = _argv(
        tiny_dirs, subject, tmp_path / "out", "--unet_targets", "no_such_layer", "--max_train_steps", "1"
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_scripts" / "train_dreambooth_moslora.py"), *argv],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error: --unet_targets: no Linear or Conv2d layer" in proc.stderr


# ------------------------------------------------------------------------------ 4. plain mistakes


def test_output_dir_that_is_a_file_or_read_only(tiny_dirs, subject, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(TrainConfigError, match="is a file, not a folder"):
        validate_config(parse_args(_argv(tiny_dirs, subject, a_file)))
    with pytest.raises(TrainConfigError, match="is a file, so"):
        validate_config(parse_args(_argv(tiny_dirs, subject, a_file / "sub")))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == read_only else real(p, mode))
    with pytest.raises(TrainConfigError, match="cannot write in .*ro"):
        validate_config(parse_args(_argv(tiny_dirs, subject, read_only / "out")))


# ------------------------------------------------------------------------------ 5. disk full


def test_disk_full_during_checkpoint(tiny_dirs, subject, tmp_path, monkeypatch):
    real, calls = ckpt.save_file, []

    def fill_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # rng + adapter of checkpoint-1 succeed; checkpoint-2 hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", fill_disk)
    out = tmp_path / "out"
    argv = _argv(tiny_dirs, subject, out, "--max_train_steps", "3", "--checkpointing_steps", "1")
    with pytest.raises(
        OutputWriteError,
        match=r"no space left on .* while writing checkpoint-2; the previous checkpoint \(checkpoint-1\) is intact",
    ):
        run_training(parse_args(argv))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1"]
    assert ckpt.checkpoint_problem(out / "checkpoint-1") is None
    assert not [p for p in out.iterdir() if p.name.startswith(".checkpoint-")]  # temporary folder removed


# ------------------------------------------------------------------------------ 6. another run's work


def test_another_runs_finished_work_is_not_overwritten(tiny_dirs, subject, tmp_path):
    out = tmp_path / "out"
    run_training(
        parse_args(_argv(tiny_dirs, subject, out, "--max_train_steps", "2", "--checkpointing_steps", "1"))
    )
    before = (out / "moslora_weights.safetensors").read_bytes()
    other = _argv(tiny_dirs, subject, out, "--max_train_steps", "2", "--seed", "7")
    with pytest.raises(TrainConfigError, match="holds another run's work"):
        run_training(parse_args(other))
    assert (out / "moslora_weights.safetensors").read_bytes() == before
    assert json.loads((out / "run.json").read_text())["seed"] == 0
    run_training(parse_args([*other, "--overwrite_output_dir", "--checkpointing_steps", "0"]))
    assert ckpt.list_checkpoints(out) == []  # the old run's checkpoints went with it: no mixed folder
    assert json.loads((out / "run.json").read_text())["seed"] == 7


# ------------------------------------------------------------------------------ 8. pruning and leftovers


def test_kill_during_pruning_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "adapter.safetensors").write_bytes(b"x")
    import shutil

    def killed(path, *a, **k):
        raise KeyboardInterrupt  # SIGKILL between the rename and the delete

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path, 2)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    (tmp_path / ".moslora_weights.safetensors.abc123.tmp").write_bytes(b"half")
    removed = sorted(p.name for p in ckpt.remove_leftovers(tmp_path))
    assert removed == [".checkpoint-1.deleting", ".moslora_weights.safetensors.abc123.tmp"]


# ------------------------------------------------------------------------------ 9. damaged checkpoints


def test_damaged_latest_checkpoint_falls_back_and_is_named(tiny_dirs, subject, tmp_path, caplog):
    out = tmp_path / "out"
    argv = _argv(tiny_dirs, subject, out, "--max_train_steps", "2", "--checkpointing_steps", "1")
    run_training(parse_args(argv))
    (out / "checkpoint-2" / "adapter.safetensors").write_bytes(b"")  # what a power loss can leave
    assert ckpt.checkpoint_problem(out / "checkpoint-2") == "adapter.safetensors is empty"
    resume = parse_args([*argv, "--resume_from_checkpoint", "latest", "--max_train_steps", "3"])
    with caplog.at_level(logging.WARNING):
        assert run_folder.resolve_resume_path(resume) == out / "checkpoint-1"
    assert "checkpoint-2 is damaged (adapter.safetensors is empty); resuming from checkpoint-1" in caplog.text
    explicit = parse_args([*argv, "--resume_from_checkpoint", str(out / "checkpoint-2")])
    with pytest.raises(TrainConfigError, match="checkpoint-2 is damaged"):
        validate_config(explicit)
    result = run_training(resume)
    assert result.steps_done == 3 and ckpt.checkpoint_problem(out / "checkpoint-2") is None


def test_checkpoint_files_are_fsynced_before_the_rename(tiny_dirs, subject, tmp_path, monkeypatch):
    synced, order = [], []
    real_replace = os.replace
    monkeypatch.setattr(ckpt, "fsync_tree", lambda folder: synced.append(Path(folder).name))
    monkeypatch.setattr(
        os, "replace", lambda a, b: (order.append((Path(a).name, synced[:])), real_replace(a, b))[1]
    )
    run_training(
        parse_args(
            _argv(tiny_dirs, subject, tmp_path / "o", "--max_train_steps", "1", "--checkpointing_steps", "1")
        )
    )
    assert (".checkpoint-1.tmp", [".checkpoint-1.tmp"]) in order


# ------------------------------------------------------------------------------ 10. plain LoRA pre-check


def test_plain_lora_with_wrong_shape_refused_before_any_layer_changes(tiny_dirs, tmp_path):
    from tests.webui_support import write_plain_lora

    path = write_plain_lora("sd1", tmp_path / "plain.safetensors")
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith(".lora_B.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 3, tensors[key].shape[1])
    save_file(tensors, str(path))
    pipe = load_tiny(tiny_dirs, "sd1")
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    with pytest.raises(AdapterMismatchError, match=r"lora_B.weight' has shape"):
        pipe.load_moslora_weights(str(path))
    assert pipe.get_list_adapters() == {}
    assert {n for n, _ in pipe.unet.named_parameters()} == set(before)  # no PEFT layer was injected


# ------------------------------------------------------------------------------ 11. export over its source


def _small_native(path: Path, with_time_embedding: bool = False) -> Path:
    g = torch.Generator().manual_seed(1)
    paths = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    if with_time_embedding:
        paths.append("time_embedding.linear_1")
    state = {}
    for p in paths:
        state[f"{p}.lora_A.weight"] = torch.randn(2, 8, generator=g)
        state[f"{p}.lora_mixer.weight"] = torch.randn(2, 2, generator=g)
        state[f"{p}.lora_B.weight"] = torch.randn(8, 2, generator=g)
    config = {"unet": ComponentConfig(r=2, lora_alpha=2, target_modules=["to_q", "linear_1"])}
    return MoSLoraFile.from_state_dicts({"unet": state}, config, base_model={"architecture": "sd1"}).save(
        path
    )


def test_export_never_overwrites_its_source_nor_an_existing_file(tmp_path):
    src = _small_native(tmp_path / "a.safetensors")
    original = src.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(src)
    hard = tmp_path / "hard.safetensors"
    os.link(src, hard)
    for target in (src, link, hard):
        with pytest.raises(RequestError, match="is the source file itself"):
            export_adapter(src, target, "kohya", overwrite=True)
    proc = run_cli("export", str(src), "--format", "kohya", "--output", str(src), "--force")
    assert proc.returncode == 2 and "source file itself" in proc.stderr and "Traceback" not in proc.stderr
    assert src.read_bytes() == original and load_moslora_file(src).num_modules == 1
    out = export_adapter(src, tmp_path / "k.safetensors", "kohya")
    with pytest.raises(RequestError, match="exists"):
        export_adapter(src, out, "kohya")
    assert run_cli("export", str(src), "--format", "kohya", "--output", str(out)).returncode == 2
    assert run_cli("export", str(src), "--format", "kohya", "--output", str(out), "--force").returncode == 0


# ------------------------------------------------------------------------------ 12. kohya's blind spot


def test_kohya_export_names_modules_sd_scripts_ignores(tmp_path):
    plain = _small_native(tmp_path / "plain.safetensors")
    with_time = _small_native(tmp_path / "time.safetensors", with_time_embedding=True)
    assert kohya_unsupported_modules(load_moslora_file(plain)) == []
    assert kohya_unsupported_modules(load_moslora_file(with_time)) == ["unet.time_embedding.linear_1"]
    quiet = run_cli("export", str(plain), "--format", "kohya", "--output", str(tmp_path / "p.safetensors"))
    noted = run_cli(
        "export", str(with_time), "--format", "kohya", "--output", str(tmp_path / "t.safetensors")
    )
    assert quiet.returncode == noted.returncode == 0
    assert "sd-scripts" not in quiet.stderr
    assert "unet.time_embedding.linear_1" in noted.stderr and "kohya-ss/sd-scripts" in noted.stderr


def test_nan_json_is_what_a_careless_writer_produces():
    assert math.isnan(json.loads(json.dumps({"a": float("nan")}))["a"])  # the reader must check, not JSON
