"""Broken single-file base models and config folders (issue "Same seed, same adapter", wanted 3 and fault 6):
each is a `BaseModelError` (a `TrainConfigError` in training) naming the file and what is wrong — never a
traceback, never a run folder half made, and never a web UI that does not start."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from moslora_diffusion import base_models, toyworld
from moslora_diffusion.errors import BaseModelError, TrainConfigError
from tests.ldm_layout import pipeline_to_single_file


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(toyworld.base_model_path()))
    return pipeline_to_single_file(pipe, tmp_path_factory.mktemp("toy") / "toy-world.safetensors")


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict | str, data: bytes) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    blob = text.encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _drop(header: dict, data: bytes, keep) -> tuple[dict, bytes]:
    """The header and data of only the tensors `keep(name)` accepts (offsets packed again)."""
    out, chunks, at = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__" or not keep(name):
            continue
        start, end = info["data_offsets"]
        chunks.append(data[start:end])
        out[name] = {**info, "data_offsets": [at, at + end - start]}
        at += end - start
    return out, b"".join(chunks)


CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def _variant(kind: str, toy_file: Path, folder: Path) -> Path:
    header, data = _split(toy_file)
    path = folder / f"{kind}.safetensors"
    if kind == "deep-json":
        return _write(path, '{"x": ' + "[" * 20_000 + "]" * 20_000 + "}", b"")
    if kind == "metadata-list":
        return _write(path, {**header, "__metadata__": ["a", "b"]}, data)
    if kind == "string-offsets":
        header[CONV_IN] = {**header[CONV_IN], "data_offsets": ["0", "8"]}
    elif kind == "1d-conv":
        info = header[CONV_IN]
        n = 1
        for d in info["shape"]:
            n *= d
        header[CONV_IN] = {**info, "shape": [n]}
    elif kind == "lying-shape":
        header[CONV_IN] = {**header[CONV_IN], "shape": [999, 4, 3, 3]}
    elif kind == "unknown-dtype":
        header[CONV_IN] = {**header[CONV_IN], "dtype": "X9"}
    elif kind == "no-vae":
        header, data = _drop(header, data, lambda k: not k.startswith("first_stage_model."))
    elif kind == "one-key-unet":
        header, data = _drop(
            header, data, lambda k: not k.startswith("model.diffusion_model.") or k == CONV_IN
        )
    elif kind == "clip-without-text-model":
        prefix = "cond_stage_model.transformer.text_model."
        renamed = {(k.replace(prefix, "cond_stage_model.transformer.", 1)): v for k, v in header.items()}
        header = renamed
    return _write(path, header, data)


CASES = {
    "deep-json": "nested deeper than",
    "metadata-list": "'__metadata__' must map text to text",
    "string-offsets": "invalid data_offsets",
    "1d-conv": "not a 4-D conv weight",
    "lying-shape": "holds .* bytes, not the",
    "unknown-dtype": "unknown dtype 'X9'",
    "no-vae": "the VAE is missing or incomplete",
    "one-key-unet": "the UNet is missing or incomplete",
    "clip-without-text-model": r"lack 'cond_stage_model.transformer.text_model.' \(written by a converter",
}


@pytest.mark.parametrize("kind", list(CASES))
def test_broken_single_files_are_named_everywhere(kind, toy_file, tmp_path):
    from moslora_diffusion.training import parse_args, run_training

    path = _variant(kind, toy_file, tmp_path)
    with pytest.raises(BaseModelError, match=CASES[kind]):
        base_models.inspect_checkpoint(path)
    assert base_models.list_single_files(tmp_path) == []  # the web UI's model menu skips it and starts
    out = tmp_path / "out"
    args = ["--pretrained_model_name_or_path", str(path), "--config", str(toyworld.base_model_path()),
            "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--max_train_steps", "1", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(TrainConfigError, match=CASES[kind]):
        run_training(parse_args(args))
    assert not out.exists() or not any(out.iterdir())


def test_a_file_diffusers_cannot_build_is_a_base_model_error_and_no_run_is_started(toy_file, tmp_path):
    """Passes every header check (shapes match the bytes) but a middle weight has the wrong shape."""
    from moslora_diffusion.training import parse_args, run_training

    header, data = _split(toy_file)
    name = next(k for k in header if k.startswith("model.diffusion_model.middle_block.") and k.endswith(".weight")
                and len(header[k]["shape"]) == 2)  # fmt: skip
    rows, cols = header[name]["shape"]
    header[name] = (
        {**header[name], "shape": [cols, rows]}
        if rows != cols
        else {**header[name], "shape": [1, rows * cols]}
    )
    path = _write(tmp_path / "transposed.safetensors", header, data)
    base_models.inspect_checkpoint(path)  # the header is consistent
    with pytest.raises(
        BaseModelError, match=r"transposed.safetensors: cannot be loaded as a Stable Diffusion pipeline"
    ):
        base_models.load_pipeline(path, config=toyworld.base_model_path())
    out = tmp_path / "out"
    args = ["--pretrained_model_name_or_path", str(path), "--config", str(toyworld.base_model_path()),
            "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--max_train_steps", "1", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(BaseModelError, match="cannot be loaded as a Stable Diffusion pipeline"):
        run_training(parse_args(args))
    assert not (out / "run.json").exists() and not list(out.glob("*.safetensors"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model_index.json").write_text("{not json"), "invalid JSON"),
        (lambda f: (f / "model_index.json").write_text("[1, 2]"), "must hold JSON objects"),
        (lambda f: (f / "unet" / "config.json").write_bytes(b"\xff\xfe{}"), "not UTF-8 text"),
        (lambda f: shutil.rmtree(f / "tokenizer"), r"no usable tokenizer/"),
        (
            lambda f: [(f / "tokenizer" / n).unlink() for n in ("tokenizer.json", "vocab.json")],
            "no usable tokenizer/",
        ),
    ],
)
def test_a_broken_config_folder_is_named_before_training(damage, message, toy_file, tmp_path):
    from moslora_diffusion.training import parse_args, validate_config

    config = tmp_path / "config"
    shutil.copytree(toyworld.base_model_path(), config)
    damage(config)
    args = ["--pretrained_model_name_or_path", str(toy_file), "--config", str(config),
            "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(TrainConfigError, match=message):
        validate_config(parse_args(args))


def test_integer_weights_are_refused_before_training(toy_file, tmp_path):
    """Fault 8: bool / int32 base weights ended in a NaN-loss message that suggested a lower learning rate."""
    header, data = _split(toy_file)
    info = header[CONV_IN]
    n = (info["data_offsets"][1] - info["data_offsets"][0]) // 4
    header[CONV_IN] = {**info, "dtype": "I32"}
    path = _write(tmp_path / "int.safetensors", header, data)
    with pytest.raises(
        BaseModelError, match=f"'{CONV_IN}' holds I32 values; a model's weights must be floating"
    ):
        base_models.inspect_checkpoint(path)
    assert n > 0


def test_bucket_settings_that_leave_no_bucket_are_refused_before_loading(tmp_path):
    """Fault 8: `--bucket --resolution 32` with the default step 64 failed only after the model loaded."""
    from moslora_diffusion.training import parse_args, validate_config

    args = ["--pretrained_model_name_or_path", str(toyworld.base_model_path()), "--instance_data_dir",
            str(toyworld.subject_path()), "--instance_prompt", "a sks circle", "--bucket", "--resolution", "32",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(TrainConfigError, match=r"--bucket: no bucket with sides in \[64, 64\] fits 32"):
        validate_config(parse_args(args))
    validate_config(parse_args([*args, "--bucket_step", "8"]))
