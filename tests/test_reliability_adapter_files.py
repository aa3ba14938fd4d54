"""Hostile adapter files (issue "Same seed, same adapter", faults 6 and 8): a named `MoSLoraFormatError` from
every reader — load, inspect, export, the web UI's fit check — never a traceback or a silent "fits"."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from moslora_diffusion.errors import MoSLoraFormatError
from moslora_diffusion.formats import export_adapter, load_moslora_file
from moslora_diffusion.formats.inspect import describe_adapter_file, format_description, read_adapter_header
from moslora_diffusion.formats.safetensors_io import read_header
from tests.pipeline_support import load_tiny, random_adapter


@pytest.fixture
def native(tiny_dirs, tmp_path):
    return random_adapter(load_tiny(tiny_dirs, "sd1"), components=("unet",)).save(
        tmp_path / "good.safetensors"
    )


def _rewrite(src, dst, metadata=None, tensors=None):
    meta, _ = read_header(src)
    save_file(
        tensors if tensors is not None else load_file(str(src)),
        str(dst),
        metadata={**meta, **(metadata or {})},
    )
    return dst


def _every_reader_refuses(path, message, tiny_dirs, tmp_path):
    from moslora_diffusion.loading import check_file_fits

    with pytest.raises(MoSLoraFormatError, match=message):
        describe_adapter_file(path)
    with pytest.raises(MoSLoraFormatError, match=message):
        check_file_fits(load_tiny(tiny_dirs, "sd1"), path)  # what the web UI's picker asks
    with pytest.raises(MoSLoraFormatError, match=message):
        export_adapter(path, tmp_path / "exported.safetensors", "diffusers")
    assert not (tmp_path / "exported.safetensors").exists()


def test_a_json_bomb_in_metadata(native, tmp_path, tiny_dirs):
    bomb = _rewrite(native, tmp_path / "bomb.safetensors", {"training": "[" * 100_000 + "]" * 100_000})
    _every_reader_refuses(
        bomb, "metadata 'training' is not valid JSON: JSON nested deeper than 64", tiny_dirs, tmp_path
    )


def test_fp8_tensors(native, tmp_path, tiny_dirs):
    tensors = {k: v.to(torch.float8_e4m3fn) for k, v in load_file(str(native)).items()}
    fp8 = _rewrite(native, tmp_path / "fp8.safetensors", tensors=tensors)
    _every_reader_refuses(fp8, "float16, bfloat16, float32 or float64", tiny_dirs, tmp_path)


def test_an_invalid_regex_as_a_rank_pattern_key(native, tmp_path, tiny_dirs):
    meta, _ = read_header(native)
    config = json.loads(meta["moslora_config"])
    config["unet"]["rank_pattern"] = {"to_q(": 2}
    bad = _rewrite(native, tmp_path / "regex.safetensors", {"moslora_config": json.dumps(config)})
    _every_reader_refuses(bad, r"rank_pattern: 'to_q\(' is not a valid pattern", tiny_dirs, tmp_path)


def test_a_lone_surrogate_in_metadata(native, tmp_path, tiny_dirs):
    bad = _rewrite(native, tmp_path / "surrogate.safetensors", {"base_model": '{"name": "x\\udc80y"}'})
    _every_reader_refuses(bad, "lone surrogate", tiny_dirs, tmp_path)


def test_zero_rank_names_the_file(tmp_path, tiny_dirs):
    path = tmp_path / "zero.safetensors"
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(0, 32),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 0)},
              str(path))  # fmt: skip
    with pytest.raises(MoSLoraFormatError, match=r"zero.safetensors: module 'unet.down_blocks.* has rank 0"):
        read_adapter_header(path)


def test_inspect_shows_terminal_escapes_instead_of_obeying_them(native, tmp_path):
    bad = _rewrite(
        native, tmp_path / "escape.safetensors", {"training": json.dumps({"note": "\x1b[2J\x07hi\nthere"})}
    )
    text = format_description(describe_adapter_file(bad))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b[2J\\x07hi\\nthere" in text
    assert load_moslora_file(bad).training["note"] == "\x1b[2J\x07hi\nthere"  # the data itself is kept
