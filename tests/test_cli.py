"""The moslora-diffusion CLI: export and inspect, in-process and through `python -m` subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moslora_diffusion import cli
from moslora_diffusion.formats import (
    ComponentConfig,
    MoSLoraFile,
    to_diffusers_state_dict,
    to_kohya_state_dict,
)
from tests.cli_support import run_cli

Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"


@pytest.fixture
def native(tmp_path) -> Path:
    g = torch.Generator().manual_seed(0)
    sd = {
        f"{Q}.lora_A.weight": torch.randn(4, 64, generator=g),
        f"{Q}.lora_mixer.weight": torch.randn(4, 4, generator=g),
        f"{Q}.lora_B.weight": torch.randn(64, 4, generator=g),
    }
    te = {
        "text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(4, 32, generator=g),
        "text_model.encoder.layers.0.self_attn.q_proj.lora_mixer.weight": torch.randn(4, 4, generator=g),
        "text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, 4, generator=g),
    }
    adapter = MoSLoraFile.from_state_dicts(
        {"unet": sd, "text_encoder_2": te},
        {
            "unet": ComponentConfig(r=4, lora_alpha=8, target_modules=["to_q"]),
            "text_encoder_2": ComponentConfig(r=4, lora_alpha=4, target_modules=["q_proj"]),
        },
        base_model={
            "architecture": "sdxl",
            "name": "stabilityai/stable-diffusion-xl-base-1.0",
            "hash": "abc",
        },
        training={"learning_rate": 1e-4, "max_train_steps": 500, "instance_prompt": "a photo of sks dog"},
    )
    return adapter.save(tmp_path / "moslora_weights.safetensors")


def test_inspect_native_text(native, capsys):
    assert cli.main(["inspect", str(native)]) == 0
    out = capsys.readouterr().out
    for expected in (
        "format:       moslora v1",
        "architecture: sdxl",
        "stable-diffusion-xl-base-1.0",
        "modules:      2",
        f"parameters:   {4 * 64 + 16 + 64 * 4 + 4 * 32 + 16 + 32 * 4:,}",
        "unet: r=4 alpha=8",
        "text_encoder_2: r=4 alpha=4",
        "max_train_steps: 500",
        f"({native.stat().st_size} bytes)",
    ):
        assert expected in out, expected


def test_inspect_json_and_plain_lora_files(native, tmp_path, capsys):
    assert cli.main(["inspect", "--json", str(native.parent)]) == 0  # a directory works too
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "moslora" and info["components"]["unet"]["mixer_parameters"] == 16

    adapter = MoSLoraFile.from_tensors_and_metadata(
        *__import__("moslora_diffusion").formats.read_safetensors(native)
    )
    save_file(
        to_kohya_state_dict(adapter), str(tmp_path / "k.safetensors"), metadata={"ss_base_model_version": "x"}
    )
    save_file(to_diffusers_state_dict(adapter), str(tmp_path / "d.safetensors"))
    assert cli.main(["inspect", "--json", str(tmp_path / "k.safetensors")]) == 0
    k = json.loads(capsys.readouterr().out)
    assert k["format"] == "kohya LoRA" and k["modules"] == 2
    assert k["components"] == {
        "unet": {"modules": 1, "ranks": {"4": 1}},
        "text_encoder_2": {"modules": 1, "ranks": {"4": 1}},
    }
    assert cli.main(["inspect", str(tmp_path / "d.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "diffusers/PEFT LoRA" in out and "modules:      2" in out


def test_export_in_process(native, tmp_path, capsys):
    assert cli.main(["export", str(native), "--format", "kohya", "--output", str(tmp_path / "out")]) == 0
    k = load_file(tmp_path / "out" / "lora_kohya.safetensors")
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in k
    assert "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.alpha" in k
    assert (
        cli.main(
            [
                "export",
                str(native),
                "--format",
                "diffusers",
                "-o",
                str(tmp_path / "d.safetensors"),
                "--dtype",
                "fp16",
            ]
        )
        == 0
    )
    d = load_file(tmp_path / "d.safetensors")
    assert f"unet.{Q}.lora_B.weight" in d and d[f"unet.{Q}.lora_B.weight"].dtype == torch.float16


def test_export_uses_unet_config_for_sgm_layout(native, tmp_path):
    cfg = tmp_path / "base" / "unet" / "config.json"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        json.dumps({"layers_per_block": 1, "down_block_types": ["A", "B"], "up_block_types": ["C", "D"]})
    )
    assert (
        cli.main(
            [
                "export",
                str(native),
                "--format",
                "kohya",
                "-o",
                str(tmp_path / "k.safetensors"),
                "--unet_config",
                str(tmp_path / "base"),
            ]
        )
        == 0
    )
    keys = load_file(tmp_path / "k.safetensors")
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.alpha" in keys  # 1 + (1 + 1) * 1 + 0


def test_subprocess_export_and_inspect(native, tmp_path):
    result = run_cli("export", str(native), "--format", "diffusers", "--output", str(tmp_path / "exp"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "exp" / "pytorch_lora_weights.safetensors").is_file()
    result = run_cli("inspect", str(tmp_path / "exp" / "pytorch_lora_weights.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "diffusers/PEFT LoRA" in result.stdout


def test_subprocess_errors_are_clean(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.ckpt")
    result = run_cli("inspect", str(tmp_path / "model.ckpt"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "pickle" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(
        "export", str(tmp_path / "missing.safetensors"), "--format", "kohya", "-o", str(tmp_path / "o")
    )
    assert result.returncode == 2 and "no such file" in result.stderr
    result = run_cli("export", "x", "--format", "a1111", "-o", "y")
    assert result.returncode == 2 and "invalid choice" in result.stderr  # argparse usage error


def test_subcommands_are_registered_in_a_table():
    assert {"export", "inspect"} <= set(cli.SUBCOMMANDS)
    with pytest.raises(ValueError, match="registered twice"):
        cli.subcommand("export", "dup", lambda p: None)(lambda a: 0)


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_help_prints(name, capsys):
    """argparse formats help text with %: a bare "95% CI" in a help string crashes --help."""
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    assert f"usage: moslora-diffusion {name}" in capsys.readouterr().out


def test_app_help_lists_the_web_ui_flags():
    """Issue 25: `moslora-diffusion app --help` listed no flags."""
    proc = run_cli("app", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--base_model", "--models_dir", "--adapters_dir", "--port", "--no_train", "--max_size"):
        assert flag in proc.stdout, flag
    assert proc.stdout.startswith("usage: moslora-diffusion app")
