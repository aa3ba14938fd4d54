"""End-to-end DreamBooth runs on tiny SD1 / SDXL pipelines (32 px, a few steps)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from moslora_diffusion.tiny import save_tiny_pipeline
from moslora_diffusion.training import (
    NonFiniteLossError,
    TrainConfigError,
    parse_args,
    prior,
    run_training,
    validate_config,
)
from moslora_diffusion.training import losses as losses_module


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return save_tiny_pipeline("sdxl", tmp_path_factory.mktemp("tiny") / "sdxl")


def make_subject(folder: Path, n: int = 3, size: tuple[int, int] = (40, 40)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", size, (30 + 60 * i, 200, 90))
        ImageDraw.Draw(im).ellipse((4, 4, 28, 28), fill=(200, 20, 20 * i))
        im.save(folder / f"subject{i}.png")
    return folder


@pytest.fixture(scope="session")
def subject(tmp_path_factory) -> Path:
    return make_subject(tmp_path_factory.mktemp("subject"))


def train(model: Path, out: Path, instance_dir: Path, *flags: str, **kwargs):
    argv = [
        "--pretrained_model_name_or_path",
        str(model),
        "--instance_data_dir",
        str(instance_dir),
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--seed",
        "0",
        "--learning_rate",
        "1e-3",
        *flags,
    ]
    if "--instance_prompt" not in flags:
        argv += ["--instance_prompt", "a sks blob"]
    return run_training(parse_args(argv), **kwargs)


def read_native(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def native_modules(tensors: dict[str, torch.Tensor], meta: dict[str, str]):
    """Yield (component, module_path, A, M, B, scale) from a native file."""
    config = json.loads(meta["moslora_config"])
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            stem = key[: -len(".lora_A.weight")]
            component, _, path = stem.partition(".")
            c = config[component]
            scale = c["lora_alpha"] / (c["r"] ** 0.5 if c["use_rslora"] else c["r"])
            yield (
                component,
                path,
                tensors[key],
                tensors[f"{stem}.lora_mixer.weight"],
                tensors[f"{stem}.lora_B.weight"],
                scale,
            )


def fused_deltas_match(pipe, expected: dict[tuple[str, str], torch.Tensor], atol: float = 1e-5) -> int:
    """Load nothing: compare (fused - base) weights of `pipe` with `expected` deltas; return the count."""
    checked = 0
    for (component, path), delta in expected.items():
        module = getattr(pipe, component).get_submodule(path)
        layer = getattr(module, "base_layer", module)
        base = pipe._moslora_test_base[(component, path)]
        torch.testing.assert_close(layer.weight.detach() - base, delta, atol=atol, rtol=1e-4)
        checked += 1
    return checked


def load_in_stock_diffusers(
    model: Path, out: Path, modules: dict[tuple[str, str], torch.Tensor], weight_name: str | None = None
):
    """Load the output folder with stock `load_lora_weights`, fuse, and compare weight deltas."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model))
    pipe._moslora_test_base = {
        key: getattr(pipe, key[0]).get_submodule(key[1]).weight.detach().clone() for key in modules
    }
    pipe.load_lora_weights(str(out), weight_name=weight_name)  # default: pytorch_lora_weights.safetensors
    pipe.fuse_lora(components=sorted({c for c, _ in modules}))
    assert fused_deltas_match(pipe, modules) == len(modules)
    return pipe


# ----------------------------------------------------------------------------- SD1 MoSLoRA


@pytest.fixture(scope="module")
def sd1_run(tiny_sd1, subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd1-run")
    events = []
    result = train(
        tiny_sd1,
        out,
        subject,
        "--max_train_steps",
        "3",
        "--checkpointing_steps",
        "2",
        "--validation_prompt",
        "a sks blob",
        "--num_validation_images",
        "2",
        "--validation_steps",
        "2",
        "--validation_inference_steps",
        "2",
        "--report_to",
        "tensorboard",
        "--export_kohya",
        callback=events.append,
    )
    return result, events, out


def test_sd1_outputs_and_events(sd1_run):
    result, events, out = sd1_run
    assert result.steps_done == 3 and not result.cancelled and result.final_loss is not None
    assert result.validation_s > 0  # two validations (signals and samples), timed
    assert result.weights_path == out / "moslora_weights.safetensors"
    for name in (
        "moslora_weights.safetensors",
        "pytorch_lora_weights.safetensors",
        "README.md",
        "loss_curve.png",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == [
        "step-000002.png",
        "step-000003.png",
    ]
    assert Image.open(out / "validation" / "step-000003.png").size == (64, 32)  # 2 images side by side
    assert (out / "checkpoint-2" / "adapter.safetensors").is_file()
    logs = list((out / "logs").rglob("events.out.tfevents*"))
    assert logs, "tensorboard log missing"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for log in logs:
        tags |= set(EventAccumulator(str(log)).Reload().Tags()["scalars"])
    assert {"loss", "signals/subject_fit", "signals/prompt_shift"} <= tags, tags  # the learning signals too
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 3 and kinds[-1] == "done" and "checkpoint" in kinds
    validations = [e for e in events if e.kind == "validation"]
    assert len(validations) == 2 and len(validations[0].images) == 2
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3] and all(e.max_steps == 3 and e.lr == 1e-3 for e in steps)
    card = (out / "README.md").read_text()
    assert "a sks blob" in card and "load_lora_weights" in card and "validation/step-000003.png" in card


def test_sd1_native_file_has_mixers_and_trained_b(sd1_run):
    _, _, out = sd1_run
    tensors, meta = read_native(out / "moslora_weights.safetensors")
    assert meta["format"] == "moslora" and meta["moslora_version"] == "1"
    config = json.loads(meta["moslora_config"])
    assert (
        set(config) == {"unet"} and config["unet"]["r"] == 4 and config["unet"]["mixer_init"] == "orthogonal"
    )  # the default
    base = json.loads(meta["base_model"])
    assert base["architecture"] == "sd1" and base["name"].endswith("sd1")
    training = json.loads(meta["training"])
    assert training["instance_prompt"] == "a sks blob" and training["steps_done"] == 3
    mods = list(native_modules(tensors, meta))
    assert len(mods) == 6 * 2 * 4  # 6 transformer blocks x (attn1, attn2) x (to_q, to_k, to_v, to_out.0)
    for _, path, A, M, B, _ in mods:
        assert M.shape == (4, 4) and A.shape[0] == 4 and B.shape[1] == 4
        assert B.abs().max() > 0, f"{path}: lora_B still zero after training"
        assert not torch.allclose(M, torch.eye(4))


def test_sd1_folded_file_equals_s_b_m_a(sd1_run):
    _, _, out = sd1_run
    tensors, meta = read_native(out / "moslora_weights.safetensors")
    folded = read_tensors(out / "pytorch_lora_weights.safetensors")
    assert not any("mixer" in k for k in folded)
    for component, path, A, M, B, s in native_modules(tensors, meta):
        A2 = folded[f"{component}.{path}.lora_A.weight"]
        B2 = folded[f"{component}.{path}.lora_B.weight"]
        torch.testing.assert_close(B2 @ A2, s * B @ M @ A, atol=1e-6, rtol=1e-5)


def test_sd1_loads_in_stock_diffusers(sd1_run, tiny_sd1):
    _, _, out = sd1_run
    tensors, meta = read_native(out / "moslora_weights.safetensors")
    expected = {(c, p): s * B @ M @ A for c, p, A, M, B, s in native_modules(tensors, meta)}
    load_in_stock_diffusers(tiny_sd1, out, expected)


def test_sd1_kohya_export_and_native_loader(sd1_run, tiny_sd1):
    from diffusers import StableDiffusionPipeline

    from moslora_diffusion.formats import load_moslora_file

    _, _, out = sd1_run
    tensors, meta = read_native(out / "moslora_weights.safetensors")
    expected = {(c, p): s * B @ M @ A for c, p, A, M, B, s in native_modules(tensors, meta)}
    kohya = read_tensors(out / "lora_kohya.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya) and any(k.endswith(".alpha") for k in kohya)
    load_in_stock_diffusers(tiny_sd1, out, expected, weight_name="lora_kohya.safetensors")
    assert load_moslora_file(out).num_modules == len(expected)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd1))
    pipe._moslora_test_base = {k: pipe.unet.get_submodule(k[1]).weight.detach().clone() for k in expected}
    pipe.load_moslora_weights(str(out))
    pipe.fuse_lora(components=["unet"])
    assert fused_deltas_match(pipe, expected) == len(expected)


def test_sd1_refuses_to_resume_another_run(sd1_run, tiny_sd1, tiny_sdxl, subject):
    """The run fingerprint covers the base model, the seed, every training setting and the data."""
    _, _, out = sd1_run
    same = ["--instance_data_dir", str(subject), "--instance_prompt", "a sks blob", "--output_dir", str(out)]
    same += [
        "--resolution",
        "32",
        "--seed",
        "0",
        "--learning_rate",
        "1e-3",
        "--resume_from_checkpoint",
        "latest",
    ]
    model = ["--pretrained_model_name_or_path", str(tiny_sd1)]
    validate_config(parse_args([*model, *same, "--max_train_steps", "9"]))  # the same run, extended: fine
    for change, message in (
        (["--pretrained_model_name_or_path", str(tiny_sdxl)], "base_model: .*sd1.* there, .*sdxl.* now"),
        (["--rank", "8"], "--rank: 4 there, 8 now"),
        (["--seed", "1"], "--seed: 0 there, 1 now"),
        (["--learning_rate", "1e-4"], "--learning_rate: 0.001 there, 0.0001 now"),
        (["--instance_prompt", "a zq blob"], "--instance_prompt"),
    ):
        for extra in ([], ["--overwrite_output_dir"]):  # overwriting never means resuming another run
            argv = [*model, *same, *change, *extra]
            with pytest.raises(TrainConfigError, match=f"checkpoint-2 belongs to another run.*{message}"):
                validate_config(parse_args(argv))
    # without --resume_from_checkpoint, the folder's earlier work is not overwritten either
    fresh = [a for a in [*model, *same] if a not in ("--resume_from_checkpoint", "latest")]
    with pytest.raises(TrainConfigError, match="holds another run's work .*checkpoint-2"):
        validate_config(parse_args(fresh))
    validate_config(parse_args([*fresh, "--overwrite_output_dir"]))  # unless told so


def test_sd2_v_prediction_bf16_gradient_checkpointing(tmp_path, subject):
    import warnings

    model = save_tiny_pipeline("sd2", tmp_path / "sd2")
    with warnings.catch_warnings(
        record=True
    ) as caught:  # the suite ignores FutureWarnings; this run must not
        warnings.simplefilter("always")
        result = train(
            model,
            tmp_path / "out",
            subject,
            "--max_train_steps",
            "2",
            "--mixed_precision",
            "bf16",
            "--gradient_checkpointing",
            "--train_text_encoder",
            "--snr_gamma",
            "5",
            "--noise_offset",
            "0.05",
        )
    deprecated = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert not deprecated, deprecated  # text-encoder checkpointing through the current transformers name
    tensors, meta = read_native(result.weights_path)
    base = json.loads(meta["base_model"])
    assert base["architecture"] == "sd2" and base["prediction_type"] == "v_prediction"
    assert all(t.dtype == torch.float32 for t in tensors.values())  # adapters trained in fp32
    assert result.final_loss is not None and result.final_loss == result.final_loss


# ----------------------------------------------------------------------------- plain LoRA, captions


def test_lora_adapter_with_caption_files(tiny_sd1, tmp_path):
    inst = make_subject(tmp_path / "inst", n=2)
    (inst / "subject0.txt").write_text("a sks blob on grass")
    (inst / "metadata.jsonl").write_text(
        json.dumps({"file_name": "subject1.png", "text": "a sks blob, close up"})
    )
    out = tmp_path / "out"
    result = train(
        tiny_sd1,
        out,
        inst,
        "--adapter",
        "lora",
        "--max_train_steps",
        "2",
        "--instance_prompt",
        "",
        "--lora_alpha",
        "8",
    )
    assert result.weights_path == out / "pytorch_lora_weights.safetensors"
    assert result.validation_s > 0  # no prompt, but the learning signals are measured at the end
    assert not (out / "moslora_weights.safetensors").exists()
    folded = read_tensors(out / "pytorch_lora_weights.safetensors")
    assert not any("mixer" in k for k in folded)
    assert any(folded[k].abs().max() > 0 for k in folded if k.endswith("lora_B.weight"))
    expected = {}
    for key in folded:
        if key.endswith(".lora_A.weight"):
            component, _, path = key[: -len(".lora_A.weight")].partition(".")
            expected[(component, path)] = folded[key.replace("lora_A", "lora_B")] @ folded[key]
    load_in_stock_diffusers(tiny_sd1, out, expected)
    card = (out / "README.md").read_text()
    assert "LORA adapter" in card and "load_moslora_weights" not in card


# ----------------------------------------------------------------------------- SDXL, both text encoders


def test_sdxl_with_both_text_encoders(tiny_sdxl, subject, tmp_path):
    out = tmp_path / "out"
    result = train(
        tiny_sdxl,
        out,
        subject,
        "--train_text_encoder",
        "--text_encoder_lr",
        "1e-3",
        "--max_train_steps",
        "2",
        "--mixer_init",
        "orthogonal",
        "--rank",
        "2",
    )
    tensors, meta = read_native(result.weights_path)
    config = json.loads(meta["moslora_config"])
    assert set(config) == {"unet", "text_encoder", "text_encoder_2"}
    assert json.loads(meta["base_model"])["architecture"] == "sdxl"
    mods = list(native_modules(tensors, meta))
    for component in config:
        trained = [B.abs().max() > 0 for c, _, _, _, B, _ in mods if c == component]
        assert trained and any(trained), f"{component}: no trained lora_B"
    expected = {(c, p): s * B @ M @ A for c, p, A, M, B, s in mods}
    load_in_stock_diffusers(tiny_sdxl, out, expected)


# ----------------------------------------------------------------------------- prior preservation


def test_prior_preservation_generates_missing_class_images(tiny_sd1, subject, tmp_path):
    class_dir = tmp_path / "class"
    out = tmp_path / "out"
    flags = ["--with_prior_preservation", "--class_data_dir", str(class_dir), "--class_prompt", "a blob"]
    flags += ["--num_class_images", "2", "--class_inference_steps", "2", "--sample_batch_size", "2"]
    result = train(tiny_sd1, out, subject, *flags, "--max_train_steps", "1")
    assert result.steps_done == 1
    made = sorted(class_dir.glob("*.png"))
    assert len(made) == 2 and all(Image.open(p).size == (32, 32) for p in made)
    stamps = {p: p.stat().st_mtime_ns for p in made}
    cfg = parse_args(
        ["--class_data_dir", str(class_dir), "--class_prompt", "a blob", "--num_class_images", "3"]
    )
    cfg.pretrained_model_name_or_path, cfg.class_inference_steps = str(tiny_sd1), 2
    new = prior.generate_class_images(cfg, "sd1", 32, torch.device("cpu"))
    assert len(new) == 1 and new[0] not in stamps
    assert {p: p.stat().st_mtime_ns for p in made} == stamps  # the old ones were not rewritten
    assert prior.generate_class_images(cfg, "sd1", 32, torch.device("cpu")) == []


def test_class_prompts_file_makes_a_captioned_regularisation_set(tiny_sd1, subject, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a broad set\na red square\n\na blue cross\n")
    class_dir = tmp_path / "class"
    seen = []
    real_loss = losses_module.dreambooth_loss

    def recording(per_example, n_inst, weight):
        seen.append((per_example.shape[0], n_inst))
        return real_loss(per_example, n_inst, weight)

    monkeypatch.setattr(losses_module, "dreambooth_loss", recording)
    flags = [
        "--with_prior_preservation",
        "--class_data_dir",
        str(class_dir),
        "--class_prompts_file",
        str(prompts),
    ]
    flags += ["--num_class_images", "3", "--class_inference_steps", "2", "--sample_batch_size", "2"]
    result = train(tiny_sd1, tmp_path / "out", subject, *flags, "--max_train_steps", "1")
    assert result.steps_done == 1 and seen == [(2, 1)]  # one instance and one captioned class image
    made = sorted(class_dir.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text().strip() for p in made]
    assert captions == ["a red square", "a blue cross", "a red square"]  # the prompts in turn
    # a class image without a caption, and no --class_prompt to fall back on: refused, naming the file
    made[0].with_suffix(".txt").unlink()
    with pytest.raises(TrainConfigError, match=f"no caption for {made[0].name}"):
        train(tiny_sd1, tmp_path / "out2", subject, *flags, "--max_train_steps", "1")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(TrainConfigError, match="holds no prompt"):
        validate_config(parse_args(["--pretrained_model_name_or_path", str(tiny_sd1), "--instance_data_dir",
                                    str(subject), "--instance_prompt", "x", "--output_dir", str(tmp_path / "o3"),
                                    "--with_prior_preservation", "--class_data_dir", str(class_dir),
                                    "--class_prompts_file", str(empty)]))  # fmt: skip


def test_validation_time_is_reported_only_when_something_is_validated(tiny_sd1, subject, tmp_path, capsys):
    quiet = train(tiny_sd1, tmp_path / "quiet", subject, "--max_train_steps", "1", "--no-signals")
    assert quiet.validation_s == 0.0  # no signals, no prompt, no scorer: validate() does nothing
    assert "(validation" not in "".join(capsys.readouterr())
    timed = train(tiny_sd1, tmp_path / "timed", subject, "--max_train_steps", "1", "--validation_prompt", "a sks blob",
                  "--num_validation_images", "1", "--validation_inference_steps", "2", "--no-signals")  # fmt: skip
    assert timed.validation_s > 0
    printed = "".join(capsys.readouterr()).splitlines()
    summary = [line for line in printed if line.startswith("finished: 1/1 steps")]
    assert len(summary) == 1 and "s (validation " in summary[0], printed


# ----------------------------------------------------------------------------- resume, cancel, NaN


def test_cancel_then_resume_equals_uninterrupted_run(tiny_sd1, tmp_path):
    inst = make_subject(tmp_path / "inst", n=3, size=(48, 40))  # non-square + flips: random augmentation
    flags = ["--max_train_steps", "4", "--random_flip", "--lora_dropout", "0.1"]
    flags += ["--gradient_accumulation_steps", "2", "--checkpointing_steps", "10", "--lr_scheduler", "cosine"]
    full = train(tiny_sd1, tmp_path / "full", inst, *flags)

    done = []
    stopped = train(
        tiny_sd1,
        tmp_path / "split",
        inst,
        *flags,
        callback=lambda e: done.append(e.step) if e.kind == "step" else None,
        should_stop=lambda: len(done) >= 2,
    )
    assert stopped.cancelled and stopped.steps_done == 2
    assert (tmp_path / "split" / "checkpoint-2").is_dir()
    assert stopped.weights_path.is_file()  # the adapter of what was done is kept
    resumed = train(tiny_sd1, tmp_path / "split", inst, *flags, "--resume_from_checkpoint", "latest")
    assert resumed.steps_done == 4 and not resumed.cancelled
    a, _ = read_native(full.weights_path)
    b, _ = read_native(resumed.weights_path)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-5)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_sd1, subject, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = losses_module.per_example_mse

    def poisoned(pred, target):
        calls["n"] += 1
        out = real(pred, target)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(losses_module, "per_example_mse", poisoned)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3.*checkpoint-2"):
        train(tiny_sd1, out, subject, "--max_train_steps", "5", "--checkpointing_steps", "2")
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "moslora_weights.safetensors").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary leftovers
