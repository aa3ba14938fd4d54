"""Learning signals (training/signals.py) and the stop when learnt (training/stopping.py, --stop_when_learned)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from moslora_diffusion import sampling
from moslora_diffusion.compat import adapter_layers
from moslora_diffusion.training import TrainConfigError, parse_args, validate_config
from moslora_diffusion.training import signals as sig
from moslora_diffusion.training.checkpoint import BEST_ADAPTER_NAME, read_best_adapter
from moslora_diffusion.training.stopping import StopRule
from tests.test_training_e2e import make_subject, read_tensors, train

CLASS = ("--class_prompt", "a blob")


def _trainer(tiny_sd1, subject, out, *flags):
    """A trainer set up and resumed (probes drawn), before its first step."""
    from moslora_diffusion.training.loop import Trainer
    from moslora_diffusion.training.run_setup import make_accelerator

    argv = ["--pretrained_model_name_or_path", str(tiny_sd1), "--instance_data_dir", str(subject),
            "--output_dir", str(out), "--resolution", "32", "--seed", "3", "--instance_prompt", "a sks blob",
            *CLASS, *flags]  # fmt: skip
    cfg = parse_args(argv)
    validate_config(cfg)
    trainer = Trainer.setup(cfg, make_accelerator(cfg), None)
    trainer.resume()
    assert trainer.probe is None  # nothing measured before the first step: it would delay it
    trainer.validate()  # a validation at step 0 draws the probes
    return trainer


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_subject(tmp_path_factory.mktemp("sig-subject"), n=5)


def test_probes_and_subject_fit_match_a_hand_computation(tiny_sd1, subject, tmp_path):
    trainer = _trainer(tiny_sd1, subject, tmp_path / "run")
    run, probe = trainer.run, trainer.probe
    assert trainer.signals and trainer.signals[0]["step"] == 0  # the untrained adapter, recorded as step 0
    # latents: VAE means of the centre-cropped images, scaled; 4 images at most, 3 timesteps each
    from moslora_diffusion.training import data

    images = [data.preprocess(s.image, s.caption, (32, 32), True, False, None) for s in run.instances[:4]]
    vae = run.comps.vae
    with torch.no_grad():
        x0 = vae.encode(torch.stack([e.pixels for e in images])).latent_dist.mean * vae.config.scaling_factor
    x0 = x0.repeat_interleave(3, dim=0)
    total = run.comps.noise_scheduler.config.num_train_timesteps
    t = torch.tensor([int(f * (total - 1)) for f in sig.PROBE_TIMESTEPS] * 4)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(run.seed + sig._SEED_SALT))
    ac = run.comps.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(
        probe.fit.noisy, ac.sqrt() * x0 + (1 - ac).sqrt() * noise, rtol=1e-5, atol=1e-5
    )
    assert probe.fit.timesteps.tolist() == t.tolist()
    # subject fit: MSE of the UNet's epsilon prediction against the noise, with each image's caption
    unet, te = run.unet, run.text_encoders[0]
    ids = run.comps.tokenizers[0](
        [c for e in images for c in [e.caption] * 3],
        padding="max_length",
        max_length=run.comps.tokenizers[0].model_max_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        pred = unet(probe.fit.noisy, t, encoder_hidden_states=te(ids.input_ids)[0]).sample
    hand = float(((pred - noise) ** 2).mean())
    assert trainer.signals[0]["subject_fit"] == pytest.approx(hand, rel=1e-5)
    # an untrained adapter (B = 0) moves nothing
    assert trainer.signals[0]["class_shift"] == 0.0 and trainer.signals[0]["prompt_shift"] == 0.0


def test_prior_shift_is_the_adapters_relative_change_and_switching_off_leaves_training_alone(
    tiny_sd1,
    subject,
    tmp_path,
):
    trainer = _trainer(tiny_sd1, subject, tmp_path / "run")
    run, probe = trainer.run, trainer.probe
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in run.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    grads_before = {n: p.requires_grad for n, p in run.unet.named_parameters()}
    fam = probe.ordinary
    ids = run.comps.tokenizers[0](
        fam.captions,
        padding="max_length",
        max_length=run.comps.tokenizers[0].model_max_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        emb = run.text_encoders[0](ids.input_ids)[0]
        on = run.unet(fam.noisy, fam.timesteps, encoder_hidden_states=emb).sample
        with sig.adapters_off([run.unet]):
            off = run.unet(fam.noisy, fam.timesteps, encoder_hidden_states=emb).sample
    assert {n: p.requires_grad for n, p in run.unet.named_parameters()} == grads_before
    assert not any(layer.disable_adapters for layer in adapter_layers(run.unet))
    torch.testing.assert_close(off, probe.base_ordinary)  # the base predictions, computed once
    shift = float((on - off).norm() / off.norm())
    measured = probe.measure()
    assert shift > 0.01 and measured["prompt_shift"] == pytest.approx(shift, rel=1e-5)
    assert measured["class_shift"] > 0 and measured["binding"] > 0


def test_signals_do_not_change_the_training(tiny_sd1, subject, tmp_path):
    flags = ("--max_train_steps", "6", "--validation_steps", "2", "--checkpointing_steps", "0", *CLASS)
    with_signals = train(tiny_sd1, tmp_path / "a", subject, *flags)
    without = train(tiny_sd1, tmp_path / "b", subject, *flags, "--no-signals")
    a, b = read_tensors(with_signals.weights_path), read_tensors(without.weights_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = json.loads((tmp_path / "a" / sig.SIGNALS_NAME).read_text())["signals"]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert all(math.isfinite(r[k]) for r in rows for k in sig.SIGNAL_NAMES)
    assert (tmp_path / "a" / sig.SIGNALS_CURVE_NAME).is_file()
    assert "learning signals" in (tmp_path / "a" / "README.md").read_text()
    assert not (tmp_path / "b" / sig.SIGNALS_NAME).exists()


def _rows(fits, shifts=None):
    shifts = shifts or [0.1] * len(fits)
    return [
        {"step": 10 * i, "subject_fit": f, "prompt_shift": s} for i, (f, s) in enumerate(zip(fits, shifts))
    ]


def test_stop_rule_on_hand_made_histories():
    rule = StopRule(patience=2, min_improvement=0.05, max_prompt_shift=0.5)
    assert rule.reason(_rows([1.0, 0.8])) is None  # too few validations
    assert rule.reason(_rows([1.0, 0.8, 0.6, 0.5])) is None  # still improving by more than 5 %
    reason = rule.reason(_rows([1.0, 0.6, 0.59, 0.58]))  # 0.58 vs 0.6: 3.3 % over the last 2
    assert reason and "3.3 %" in reason
    assert rule.reason(_rows([1.0, 0.9], [0.0, 0.7])) and "moved" in rule.reason(
        _rows([1.0, 0.9], [0.0, 0.7])
    )
    assert rule.best(_rows([1.0, 0.6, 0.4, 0.5], [0, 0.1, 0.6, 0.2]))["step"] == 30  # 0.4 broke the bound
    assert rule.best(_rows([1.0, 0.6, 0.4, 0.5]))["step"] == 20


def test_stop_when_learned_keeps_the_best_adapter_and_resumes(tiny_sd1, subject, tmp_path):
    flags = ("--max_train_steps", "40", "--validation_steps", "2", "--checkpointing_steps", "2",
             "--stop_when_learned", "--stop_patience", "2", "--stop_min_improvement", "0.5", *CLASS)  # fmt: skip
    out = tmp_path / "run"
    result = train(tiny_sd1, out, subject, *flags)
    assert result.learned and result.steps_done < 40
    record = json.loads((out / sig.SIGNALS_NAME).read_text())
    best = StopRule(2, 0.5, 1.0).best(record["signals"])
    assert record["kept_step"] == best["step"] == result.kept_step
    if result.kept_step != result.steps_done:  # the last step's adapter is kept beside
        assert (out / "last" / "moslora_weights.safetensors").is_file()
    ckpts = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert (ckpts[-1] / BEST_ADAPTER_NAME).is_file() and read_best_adapter(ckpts[-1])
    assert "--stop_when_learned" in (out / "README.md").read_text()
    # a run resumed from a checkpoint before the stop ends at the same step with the same adapter; one resumed
    # from the stop's own checkpoint stays stopped
    assert ckpts[-1].name == f"checkpoint-{result.steps_done}" and len(ckpts) >= 2
    first = read_tensors(result.weights_path)
    for ckpt in (ckpts[0], ckpts[-1]):
        resumed = train(tiny_sd1, out, subject, *flags, "--resume_from_checkpoint", str(ckpt))
        assert resumed.steps_done == result.steps_done and resumed.kept_step == result.kept_step, ckpt
        again = read_tensors(resumed.weights_path)
        assert all(torch.equal(first[k], again[k]) for k in first)


def test_stop_when_learned_needs_the_signals(tiny_sd1, subject, tmp_path):
    with pytest.raises(TrainConfigError, match="--stop_when_learned needs"):
        train(tiny_sd1, tmp_path / "x", subject, "--stop_when_learned", "--no-signals")
    with pytest.raises(TrainConfigError, match="--signal_prompts holds no prompt"):
        train(tiny_sd1, tmp_path / "y", subject, "--signal_prompts", " | ")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_multi_tensor_adamw_step_equals_the_loop():
    """make_optimizer's `foreach` AdamW (CPU) is bit-identical to torch's per-tensor loop."""
    torch.manual_seed(0)
    start = [torch.randn(16, 4) for _ in range(12)]

    def run(**kind):
        params = [p.clone().requires_grad_() for p in start]
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **kind)
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return params

    assert all(torch.equal(a, b) for a, b in zip(run(foreach=False), run(foreach=True)))


def test_compile_is_refused_on_cpu_before_anything_loads(tiny_sd1, subject, tmp_path):
    """On CPU inductor's gradients differed from eager mode's (benchmarks/bench_compile.py): refused by name."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine compiles")
    with pytest.raises(TrainConfigError, match="--compile needs a CUDA device"):
        train(tiny_sd1, tmp_path / "c", subject, "--compile")
    assert not (tmp_path / "c" / "run.json").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="--compile runs on CUDA only")
def test_compile_trains_the_same_adapter_and_resumes_exactly(tiny_sd1, subject, tmp_path):
    """--compile: within float tolerance of eager mode, and a resumed compiled run ends where an uninterrupted one
    does."""
    flags = ("--max_train_steps", "4", "--checkpointing_steps", "2", "--no-signals")
    eager = read_tensors(train(tiny_sd1, tmp_path / "eager", subject, *flags).weights_path)
    whole = read_tensors(train(tiny_sd1, tmp_path / "whole", subject, *flags, "--compile").weights_path)
    losses = [
        json.loads((tmp_path / run / "checkpoint-2" / "state.json").read_text())["losses"]
        for run in ("eager", "whole")
    ]
    assert losses[0][0] == pytest.approx(
        losses[1][0], rel=1e-5
    )  # the same first forward, within float tolerance
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-2)  # after one (slightly different) Adam step
    # Adam divides by the gradient's size, so last-bit differences of tiny gradients move a few weights by up
    # to 2 x lr per step: compare the adapters as a whole, against how far training moved them
    start = read_tensors(train(tiny_sd1, tmp_path / "start", subject, "--max_train_steps", "1",
                               "--learning_rate", "1e-12", "--no-signals").weights_path)  # fmt: skip
    moved = sum(float((eager[k] - start[k]).norm()) for k in eager)
    apart = sum(float((eager[k] - whole[k]).norm()) for k in eager)
    assert apart < 0.05 * moved, (apart, moved)
    half = tmp_path / "half"
    train(
        tiny_sd1,
        half,
        subject,
        "--max_train_steps",
        "2",
        "--checkpointing_steps",
        "2",
        "--no-signals",
        "--compile",
    )
    resumed = train(tiny_sd1, half, subject, *flags, "--compile", "--resume_from_checkpoint", "latest")
    again = read_tensors(resumed.weights_path)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_validation_samples_with_merged_adapters_and_gives_every_base_weight_back(
    tiny_sd1, subject, tmp_path
):
    from moslora_diffusion.training import validation

    trainer = _trainer(tiny_sd1, subject, tmp_path / "run", "--train_text_encoder")
    run = trainer.run
    models = [run.unet, *run.text_encoders]
    with torch.no_grad():
        for m in models:
            for name, p in m.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.05)  # an adapter that changes the output
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    storage = [p.data_ptr() for m in models for p in m.parameters()]
    pipe = validation.build_pipeline(run.comps, run.unet, run.text_encoders)

    def sample():
        request = sampling.SampleRequest(("a sks blob",) * 2, (0, 1), 4, 5.0, 32, 32)
        return sampling.draw(pipe, [request])[0]

    import numpy as np

    unmerged = np.stack([np.asarray(im, dtype=np.int16) for im in sample()])
    layers = [layer for m in models for layer in adapter_layers(m)]
    with validation.adapters_merged(models):
        assert layers and all(layer.merged for layer in layers)
        merged = np.stack([np.asarray(im, dtype=np.int16) for im in sample()])
    # the same pictures up to float rounding (8-bit pixels: at most one level apart)
    assert np.abs(merged - unmerged).max() <= 1
    # and afterwards: nothing merged, every tensor equal bit for bit, in the same storage
    assert not any(layer.merged for layer in layers)
    for m, b in zip(models, before):
        after = m.state_dict()
        assert all(torch.equal(after[k], b[k]) for k in b)
    assert [p.data_ptr() for m in models for p in m.parameters()] == storage


def test_validation_with_a_prompt_does_not_change_the_training(tiny_sd1, subject, tmp_path):
    flags = ("--max_train_steps", "4", "--validation_steps", "2", "--checkpointing_steps", "0",
             "--train_text_encoder", "--no-signals")  # fmt: skip
    validated = train(tiny_sd1, tmp_path / "a", subject, *flags, "--validation_prompt", "a sks blob",
                      "--num_validation_images", "1", "--validation_inference_steps", "2")  # fmt: skip
    plain = train(tiny_sd1, tmp_path / "b", subject, *flags)
    assert validated.validation_s > 0 and (tmp_path / "a" / "validation" / "step-000002.png").is_file()
    a, b = read_tensors(validated.weights_path), read_tensors(plain.weights_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
