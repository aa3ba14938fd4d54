"""Toy world: renderer, reader, tokenizer, bundled base model, subject detector."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from moslora_diffusion import toyworld  # noqa: E402
from moslora_diffusion.toyworld.data import HELD_OUT_COMBOS, train_combos, training_caption  # noqa: E402
from moslora_diffusion.toyworld.reader import read_attributes  # noqa: E402
from moslora_diffusion.toyworld.render import (  # noqa: E402
    COLORS,
    RESOLUTION,
    SHAPES,
    Scene,
    all_combos,
    random_scene,
    render,
    render_array,
    scene_caption,
)
from moslora_diffusion.toyworld.subject import (  # noqa: E402
    CLASS_PROMPT,
    INSTANCE_PROMPT,
    detect_subject,
    render_subject,
)
from moslora_diffusion.toyworld.tokenizer import MAX_LENGTH, RARE_TOKEN, WORDS, build_vocab_and_merges  # noqa: E402

BUNDLED = toyworld.base_model_path()
needs_model = pytest.mark.skipif(
    not (BUNDLED / "model_index.json").exists(), reason="bundled base model not present"
)


def _blur_noise(
    arr: np.ndarray, rng: np.random.Generator, radius: float = 0.8, sigma: float = 12.0
) -> np.ndarray:
    b = np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    return np.clip(b + rng.normal(0, sigma, b.shape), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- renderer


def test_palette_and_shapes_meet_the_spec():
    assert len(COLORS) >= 6 and len(SHAPES) >= 4 and RESOLUTION in (32, 64)
    names = list(COLORS)
    closest = min(np.linalg.norm(np.subtract(COLORS[a], COLORS[b])) for a in names for b in names if a < b)
    assert closest > 100


def test_render_is_deterministic_and_jittered():
    a = render_array(random_scene(42))
    b = render_array(random_scene(42))
    np.testing.assert_array_equal(a, b)
    scenes = [random_scene(s) for s in range(50)]
    assert len({round(s.size, 3) for s in scenes}) == 50
    assert len({(round(s.cx, 3), round(s.cy, 3)) for s in scenes}) == 50
    im = render(scenes[0])
    assert im.size == (RESOLUTION, RESOLUTION) and im.mode == "RGB"


def test_background_is_exactly_the_palette_colour_and_object_is_inside():
    s = Scene("square", "red", "blue", size=12, cx=16, cy=16)
    arr = render_array(s)
    assert tuple(arr[0, 0]) == COLORS["blue"]
    assert tuple(arr[16, 16]) == COLORS["red"]
    # 12 px square centred at 16: pixels 10..21 are red, 9 and 23 are background (22 is an edge pixel).
    assert (arr[10:22, 10:22] == COLORS["red"]).all()
    assert tuple(arr[16, 9]) == COLORS["blue"] and tuple(arr[16, 23]) == COLORS["blue"]


def test_captions_are_plain_english():
    assert scene_caption(Scene("circle", "red", "blue")) == "a red circle on a blue background"
    assert toyworld.caption("circle", None, None) == "a circle"
    assert toyworld.caption(None, None, "green") == "a shape on a green background"
    assert toyworld.caption(None, None, None) == ""


def test_bad_scene_values_are_named():
    with pytest.raises(ValueError, match="'pink'"):
        Scene("circle", "pink", "blue")
    with pytest.raises(ValueError, match="'star'"):
        Scene("star", "red", "blue")


def test_held_out_combos_never_in_training():
    train = set(train_combos())
    assert len(HELD_OUT_COMBOS) == 12 and not train & set(HELD_OUT_COMBOS)
    assert train | set(HELD_OUT_COMBOS) == set(all_combos())
    # every single attribute value still appears in training
    for i, values in enumerate((SHAPES, list(COLORS), list(COLORS))):
        assert {c[i] for c in train} == set(values)
    rng = np.random.default_rng(0)
    caps = [training_caption(Scene("circle", "red", "blue"), rng) for _ in range(2000)]
    assert 0.07 < caps.count("") / 2000 < 0.13
    assert 0.7 < caps.count("a red circle on a blue background") / 2000 < 0.8


# ---------------------------------------------------------------- reader


def test_reader_agrees_with_renderer_on_thousands_of_scenes():
    rng = np.random.default_rng(123)
    scenes = [random_scene(rng) for _ in range(2000)]
    wrong = [
        s for s in scenes if not read_attributes(render_array(s)).matches(s.shape, s.color, s.background)
    ]
    assert len(wrong) / len(scenes) <= 0.01, wrong[:5]


def test_reader_tolerates_blur_and_noise():
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(600)]
    ok = [
        read_attributes(_blur_noise(render_array(s), rng)).matches(s.shape, s.color, s.background)
        for s in scenes
    ]
    assert np.mean(ok) >= 0.97


def test_reader_reports_missing_object():
    arr = np.full((RESOLUTION, RESOLUTION, 3), COLORS["green"], np.uint8)
    r = read_attributes(arr)
    assert r.shape is None and r.color is None and r.background == "green"


def test_reader_accepts_pil_and_float_arrays():
    s = Scene("triangle", "yellow", "purple", size=18)
    arr = render_array(s)
    assert read_attributes(render(s)).matches("triangle", "yellow", "purple")
    assert read_attributes(arr.astype(np.float32) / 255.0).matches("triangle", "yellow", "purple")
    with pytest.raises(ValueError, match="shape"):
        read_attributes(np.zeros((32, 32), np.uint8))


# ---------------------------------------------------------------- tokenizer


def test_every_vocabulary_word_is_one_token(tmp_path):
    from moslora_diffusion.toyworld.tokenizer import load_tokenizer, write_tokenizer_files

    tok = load_tokenizer(write_tokenizer_files(tmp_path))
    assert tok.model_max_length == MAX_LENGTH
    for w in WORDS:
        assert tok.tokenize(w) == [w + "</w>"], w
    prompt = "a red triangle on a blue background"
    ids = tok(prompt, padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH and ids[0] == tok.bos_token_id and ids[8] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    # words outside the vocabulary still tokenize (letter by letter) and round-trip
    assert tok.decode(tok("a zebra toy").input_ids, skip_special_tokens=True) == "a zebra toy"


@needs_model
def test_bundled_tokenizer_matches_training_and_text_encoder():
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(BUNDLED / "tokenizer")
    te_cfg = CLIPTextConfig.from_pretrained(BUNDLED / "text_encoder")
    assert tok.model_max_length == MAX_LENGTH == te_cfg.max_position_embeddings
    vocab, _ = build_vocab_and_merges()
    assert tok.get_vocab() == vocab
    assert json.loads((BUNDLED / "tokenizer" / "vocab.json").read_text()) == vocab
    assert te_cfg.vocab_size == len(vocab) and te_cfg.eos_token_id == tok.eos_token_id
    assert tok.tokenize(INSTANCE_PROMPT) == ["a</w>", f"{RARE_TOKEN}</w>", "circle</w>"]


# ---------------------------------------------------------------- bundled base model


@needs_model
def test_bundled_model_size_and_settings():
    total = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, total
    s = toyworld.default_sampler_settings()
    assert (
        s["scheduler"]
        == json.loads((BUNDLED / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    )
    assert s["height"] == s["width"] == RESOLUTION


FIXED = [  # (prompt attributes, seed) drawn correctly by the bundled model at the default settings
    (("circle", "red", "blue"), 0),
    (("square", "yellow", "white"), 1),
    (("triangle", "white", "green"), 2),
    (("cross", "blue", "purple"), 3),
]


@needs_model
def test_bundled_pipeline_loads_offline_and_draws_the_prompt():
    code = r"""
import json, sys, torch
from diffusers import StableDiffusionPipeline
from moslora_diffusion.toyworld import base_model_path, pipeline_kwargs, caption, read_attributes
torch.set_num_threads(2)
pipe = StableDiffusionPipeline.from_pretrained(base_model_path())
assert pipe.safety_checker is None and type(pipe.scheduler).__name__ == "DDIMScheduler"
fixed = json.loads(sys.argv[1])
out = pipe([caption(*c) for c, _ in fixed], generator=[torch.Generator().manual_seed(s) for _, s in fixed],
           **pipeline_kwargs())
print(json.dumps([[read_attributes(im).shape, read_attributes(im).color, read_attributes(im).background]
                  for im in out.images]))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(FIXED)], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert [tuple(g) for g in got] == [c for c, _ in FIXED]


# ---------------------------------------------------------------- subject and detector


def test_subject_assets_and_prompts():
    info = toyworld.subject_info()
    assert info["instance_prompt"] == INSTANCE_PROMPT and RARE_TOKEN in INSTANCE_PROMPT
    assert info["class_prompt"] == CLASS_PROMPT and info["description"]
    assert 4 <= len(info["images"]) <= 8
    for item in info["images"]:
        im = Image.open(item["path"])
        assert im.size == (RESOLUTION, RESOLUTION)
        assert detect_subject(im), item["file"]
        assert read_attributes(im).background in item["caption"]


def test_detector_on_rendered_subject_and_non_subject_images():
    rng = np.random.default_rng(99)
    subj = [render_subject(rng, ["blue", "green", "purple", "white"][i % 4]) for i in range(120)]
    assert all(detect_subject(im) for im in subj)
    assert np.mean([detect_subject(_blur_noise(np.asarray(im), rng)) for im in subj]) >= 0.95
    others = [render(random_scene(rng)) for _ in range(500)]
    assert not any(detect_subject(im) for im in others)
    # the closest impostors: one-colour red or yellow circles, and the design upside down
    assert not detect_subject(render(Scene("circle", "red", "blue", size=18)))
    assert not detect_subject(render(Scene("circle", "yellow", "blue", size=18)))
    assert not detect_subject(np.ascontiguousarray(np.asarray(subj[0])[::-1]))


def test_toyworld_import_is_lazy():
    # `import moslora_diffusion` itself loads diffusers (it adds pipe.load_moslora_weights); importing the
    # toy world on top must not pull in its own model / training / evaluation modules.
    code = (
        "import sys, moslora_diffusion; before = set(sys.modules);"
        "import moslora_diffusion.toyworld as t; t.base_model_path();"
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('moslora_diffusion.toyworld.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_scoring_counts_attributes():
    from moslora_diffusion.imaging import tile
    from moslora_diffusion.toyworld.evaluate import score

    combos = list(HELD_OUT_COMBOS[:3])
    images = [render(Scene(*c)) for c in combos]
    images[1] = render(Scene(combos[1][0], combos[1][1], "white" if combos[1][2] != "white" else "red"))
    res = score(images, combos)
    assert res["n"] == 3 and res["shape"] == 1.0 and res["color"] == 1.0
    assert res["background"] == pytest.approx(2 / 3) and res["all_three"] == pytest.approx(2 / 3)
    assert tile(images, ncols=2, scale=2, pad=2).size == (2 * 66 + 2, 2 * 66 + 2)


@pytest.mark.slow
def test_pretrain_smoke(tmp_path):
    """A few steps of every stage end in a pipeline directory that the stock loader reads."""
    from diffusers import StableDiffusionPipeline

    from tools.toyworld.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        output_dir=tmp_path,
        vae_max_steps=2,
        unet_max_steps=2,
        decoder_max_steps=2,
        broad_vae_minutes=1,
        num_cached=64,
        eval_per_combo=0,
        warmup_steps=1,
    )
    path = pretrain(cfg)
    assert (tmp_path / "loss_curve.png").exists() and (tmp_path / "raw" / "unet").is_dir()
    stages = {r["stage"] for r in json.loads((tmp_path / "train_log.json").read_text())["log"]}
    assert {"vae", "vae_outlines", "cache", "unet", "decoder", "done"} <= stages
    pipe = StableDiffusionPipeline.from_pretrained(path)
    assert pipe.tokenizer.model_max_length == MAX_LENGTH and pipe.vae.config.scaling_factor > 0


def test_broaden_vae_anchor_keeps_world_latents_in_place():
    """The outline stage trains the whole VAE on world scenes and random outlines; its anchor term is zero
    before the first step and keeps the encoder's world latents far closer to the original than without it."""
    import torch

    from moslora_diffusion.toyworld.data import training_scene
    from moslora_diffusion.toyworld.models import build_vae
    from moslora_diffusion.toyworld.render import render_batch
    from tools.toyworld.pretrain import PretrainConfig, broaden_vae, images_to_tensor

    torch.manual_seed(0)
    original = build_vae(scaling_factor=0.5)
    x = images_to_tensor(render_batch([training_scene(np.random.default_rng(9), 0.3) for _ in range(8)]))
    with torch.no_grad():
        before = original.encode(x).latent_dist.mean
    drift = {}
    for weight in (0.0, 1000.0):
        cfg = PretrainConfig(
            output_dir=Path("unused"), vae_max_steps=6, vae_batch_size=4, broad_vae_minutes=5,
            broad_vae_lr=1e-2, anchor_weight=weight,
        )  # fmt: skip
        log: list = []
        vae = broaden_vae(copy.deepcopy(original), cfg, log)
        assert [r["stage"] for r in log] == ["vae_outlines"] * 6 and log[0]["anchor"] < 1e-10
        assert not any(p.requires_grad for p in vae.parameters())
        with torch.no_grad():
            drift[weight] = (vae.encode(x).latent_dist.mean - before).abs().mean().item()
    assert drift[1000.0] < 0.5 * drift[0.0], drift
