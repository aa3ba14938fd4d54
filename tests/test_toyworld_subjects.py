"""Toy world, two-colour objects and the bundled subjects: pretraining data that keeps the subject's design
out, the two-halves reader, the star outline and detector, and each subject's assets, prompts and defaults."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from moslora_diffusion.toyworld import scoring
from moslora_diffusion.toyworld.data import (
    HELD_OUT_TWO_COLOUR,
    SUBJECT_DESIGN_COLOURS,
    train_two_colour_combos,
    training_caption,
    training_scene,
)
from moslora_diffusion.toyworld.defaults import training_defaults
from moslora_diffusion.toyworld.evaluate import combo_caption, score
from moslora_diffusion.toyworld.reader import matches_two_colour, read_attributes, read_halves
from moslora_diffusion.toyworld.render import (
    COLORS,
    SHAPES,
    Scene,
    all_two_colour_combos,
    random_scene,
    render,
    render_array,
    scene_caption,
)
from moslora_diffusion.toyworld.subject import CIRCLE, STAR, SUBJECTS, get_subject, subject_for_folder


def _blur_noise(im: Image.Image, rng: np.random.Generator) -> np.ndarray:
    b = np.asarray(im.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    return np.clip(b + rng.normal(0, 12.0, b.shape), 0, 255).astype(np.uint8)


def test_two_colour_scene_renders_both_halves_and_reads_back():
    scene = Scene("square", "red", "blue", size=20, cx=16, cy=16, color2="yellow")
    assert scene_caption(scene) == "a red and yellow square on a blue background"
    arr = render_array(scene)
    assert tuple(arr[10, 16]) == COLORS["red"] and tuple(arr[22, 16]) == COLORS["yellow"]
    assert tuple(arr[0, 0]) == COLORS["blue"]
    assert matches_two_colour(arr, "square", "red", "yellow", "blue")
    assert not matches_two_colour(arr, "square", "yellow", "red", "blue")  # the order of the halves counts
    with pytest.raises(ValueError, match="must differ"):
        Scene("square", "red", "blue", color2="red")
    with pytest.raises(ValueError, match="'pink'"):
        Scene("square", "red", "blue", color2="pink")


def test_reader_reads_every_two_colour_combination():
    rng = np.random.default_rng(3)
    combos = all_two_colour_combos()
    assert len(combos) == 4 * 6 * 5 * 4
    scenes = [random_scene(rng, combos) for _ in range(400)]
    assert all(matches_two_colour(render(s), s.shape, s.color, s.color2, s.background) for s in scenes)
    blurred = [
        matches_two_colour(_blur_noise(render(s), rng), s.shape, s.color, s.color2, s.background)
        for s in scenes
    ]
    assert np.mean(blurred) >= 0.9
    # a one-colour object never passes as two-colour
    one = render(Scene("circle", "red", "blue", size=18))
    assert read_halves(one)["top"] == read_halves(one)["bottom"] == "red"


def test_pretraining_never_shows_the_subject_design_or_the_held_out_panel():
    train = set(train_two_colour_combos())
    assert not train & set(HELD_OUT_TWO_COLOUR)
    design = {
        c for c in all_two_colour_combos() if c[0] == "circle" and {c[1], c[2]} == SUBJECT_DESIGN_COLOURS
    }
    assert len(design) == 8 and not train & design
    assert train | set(HELD_OUT_TWO_COLOUR) | design == set(all_two_colour_combos())
    # every colour is seen on top and below on every shape, red and yellow together on other shapes
    for shape in SHAPES:
        assert {c[1] for c in train if c[0] == shape} == set(COLORS)
        assert {c[2] for c in train if c[0] == shape} == set(COLORS)
    assert ("square", "red", "yellow", "blue") in train
    rng = np.random.default_rng(0)
    scenes = [training_scene(rng, 0.3) for _ in range(3000)]
    two = [s for s in scenes if s.color2 is not None]
    assert 0.25 < len(two) / len(scenes) < 0.35
    assert not any(s.shape == "circle" and {s.color, s.color2} == SUBJECT_DESIGN_COLOURS for s in two)
    caps = {training_caption(s, rng) for s in two}
    assert "a red and yellow circle" not in " ".join(caps)
    assert any(" and " in c for c in caps) and all(" and " not in c or c.count(" and ") == 1 for c in caps)
    # without two-colour objects the stream is the one-colour world's, draw for draw
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [training_scene(a, 0.0) for _ in range(50)] == [
        random_scene(
            b, [c for c in __import__("moslora_diffusion.toyworld.data", fromlist=["x"]).train_combos()]
        )
        for _ in range(50)
    ]


def test_held_out_two_colour_panel_scores_with_the_halves_reader():
    images = [render(Scene(c[0], c[1], c[3], 18, 16, 16, c[2])) for c in HELD_OUT_TWO_COLOUR]
    assert score(images, HELD_OUT_TWO_COLOUR)["all_three"] == 1.0
    swapped = [render(Scene(c[0], c[2], c[3], 18, 16, 16, c[1])) for c in HELD_OUT_TWO_COLOUR]
    res = score(swapped, HELD_OUT_TWO_COLOUR)
    assert res["color"] == 0.0 and res["shape"] == 1.0 and res["background"] == 1.0


@pytest.mark.parametrize("subject", list(SUBJECTS.values()), ids=list(SUBJECTS))
def test_subject_assets_are_what_the_subject_renders(subject, tmp_path):
    written = subject.write_assets(tmp_path)
    for name in ["subject.json", "metadata.jsonl"] + [f"subject_{i}.png" for i in range(6)]:
        assert filecmp.cmp(written / name, subject.path / name, shallow=False), name
    info = subject.info()
    assert info["instance_prompt"] == subject.instance_prompt and info["class_prompt"] == subject.class_prompt
    for item in info["images"]:
        im = Image.open(item["path"])
        assert subject.detect(im), item["file"]
        assert read_attributes(im).background in item["caption"]
    lines = [json.loads(x) for x in (subject.path / "metadata.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == [x["caption"] for x in info["images"]]


def test_star_detector_finds_stars_and_nothing_else():
    rng = np.random.default_rng(11)
    stars = [STAR.render(rng, STAR.backgrounds[i % 4]) for i in range(120)]
    assert np.mean([STAR.detect(im) for im in stars]) >= 0.98
    assert np.mean([STAR.detect(_blur_noise(im, rng)) for im in stars]) >= 0.9
    assert not any(CIRCLE.detect(im) for im in stars)
    two = all_two_colour_combos()
    others = [render(random_scene(rng, two)) for _ in range(300)] + [
        render(random_scene(rng)) for _ in range(200)
    ]
    assert not any(STAR.detect(im) for im in others)
    # the same colours on every outline the base model knows are not the subject
    assert not any(STAR.detect(render(Scene(s, "green", "red", 20, 16, 16, "white"))) for s in SHAPES)
    # and the star is not a word or a pretraining shape
    with pytest.raises(ValueError, match="'star'"):
        Scene("star", "green", "red")
    with pytest.raises(ValueError, match="background .green."):
        STAR.render(0, "green")


def test_subject_lookup_and_entry_defaults():
    assert get_subject(None) is CIRCLE and get_subject("star") is STAR and get_subject(STAR) is STAR
    with pytest.raises(ValueError, match="'moon'"):
        get_subject("moon")
    assert subject_for_folder(STAR.path) is STAR and subject_for_folder("/nowhere") is None
    star = training_defaults(["--instance_data_dir", str(STAR.path)])
    assert star["instance_prompt"] == "a sks shape" and star["class_prompt"] == "a shape"
    assert star["rank"] == STAR.train_defaults["rank"]
    assert "instance_prompt" not in training_defaults(["--instance_data_dir", "/my/photos"])


def test_star_yardstick_prompts_and_scores():
    sets = scoring.prompt_sets(images_per_prompt=1, quick=False, subject="star")
    assert all(p.startswith("a sks shape on a ") for p, _, _ in sets["subject"])
    assert {exp[2] for _, exp, _ in sets["subject"]} == set(STAR.backgrounds)
    assert all(p.startswith(f"a {exp[1]} shape on a ") and exp[0] is None for p, exp, _ in sets["class"])
    rng = np.random.default_rng(0)
    images = {
        "subject": [STAR.render(rng, exp[2]) for _, exp, _ in sets["subject"]],
        "class": [
            render(Scene(SHAPES[i % 4], exp[1], exp[2], 18, 16, 16))
            for i, (_, exp, _) in enumerate(sets["class"])
        ],
        "ordinary": [render(Scene(*exp, 18, 16, 16)) for _, exp, _ in sets["ordinary"]],
    }
    assert scoring.score_images(images, sets, "star") == {m: 1.0 for m in scoring.METRICS}
    # the star drawn for class prompts is no longer the class: prior lost
    leaky = {
        **images,
        "class": [
            STAR.render(rng, exp[2] if exp[2] in STAR.backgrounds else "red") for _, exp, _ in sets["class"]
        ],
    }
    assert scoring.score_images(leaky, sets, "star")["prior_preservation"] == 0.0


def test_bundled_model_composes_held_out_two_colour_objects_but_not_the_subjects():
    """The shipped base model draws two-colour combinations it never saw; the rare-token prompts draw neither
    subject (that is DreamBooth's job)."""
    import torch

    from moslora_diffusion.toyworld.evaluate import generate, load_toy_pipeline

    torch.set_num_threads(2)
    pipe = load_toy_pipeline()
    combos = list(HELD_OUT_TWO_COLOUR[::2])
    res = score(generate(pipe, [combo_caption(c) for c in combos], [0] * len(combos)), combos)
    assert res["all_three"] >= 0.75, res
    prompts = [f"{s.instance_prompt} on a {s.backgrounds[0]} background" for s in (CIRCLE, STAR)]
    images = generate(pipe, prompts * 4, [k for k in range(4) for _ in prompts])
    assert not any(s.detect(im) for s, im in zip([CIRCLE, STAR] * 4, images))


def test_random_outlines_are_broad_but_never_the_star():
    """The VAE's extra outlines: blobs and spiky stars of every point count but five, inside their box, in
    three palette colours. The star detector chooses among the world's outlines and the star only, so a rare
    green-over-white spiky outline can pass for the star: under 1 % of random outlines."""
    from moslora_diffusion.toyworld.render import OUTLINE_POINTS, random_outline_array, random_outline_polygon

    assert 5 not in OUTLINE_POINTS
    rng = np.random.default_rng(3)
    counts = set()
    for _ in range(400):
        poly = random_outline_polygon(rng, (4.0, 6.0, 24.0, 26.0))
        counts.add(len(poly))
        xs, ys = zip(*poly)
        assert (
            min(xs) >= 4.0 - 1e-6
            and max(xs) <= 24.0 + 1e-6
            and min(ys) >= 6.0 - 1e-6
            and max(ys) <= 26.0 + 1e-6
        )
    assert 10 not in counts  # a five-pointed star has 10 vertices
    assert set(range(3, 10)) | {2 * p for p in OUTLINE_POINTS} == counts
    images = [random_outline_array(rng) for _ in range(600)]
    palette = {tuple(c) for c in COLORS.values()}
    for im in images:
        assert im.shape == (32, 32, 3) and im.dtype == np.uint8 and tuple(im[0, 0]) in palette
    assert np.mean([STAR.detect(im) for im in images]) < 0.01


def test_star_template_fills_the_measured_box():
    """The reader's templates fill the object's bounding box: the same masks for the world's shapes, and a
    star whose points reach all four sides (the rendered star's do not reach the bottom and sides)."""
    from moslora_diffusion.toyworld.render import shape_mask

    box = (6.0, 5.0, 26.0, 25.0)
    for shape in SHAPES:
        np.testing.assert_array_equal(shape_mask(shape, box, fit=True), shape_mask(shape, box))
    fitted, drawn = shape_mask("star", box, fit=True), shape_mask("star", box)
    assert fitted[5:25, 6].max() > 0.2 and fitted[5:25, 25].max() > 0.2 and fitted[24, 6:26].max() > 0.2
    assert drawn[24, 6:26].max() < 0.05 and fitted.sum() > drawn.sum()


def test_bundled_vae_carries_both_subjects_and_the_world():
    """No adapter can draw what the decoder cannot output: the shipped VAE's round trips keep the star's new
    outline (0 % before its outline stage), the circle and the world's scenes."""
    import torch
    from diffusers import AutoencoderKL

    from moslora_diffusion.toyworld import base_model_path
    from tools.toyworld.vae_probe import round_trip_rates

    torch.set_num_threads(2)
    vae = AutoencoderKL.from_pretrained(base_model_path() / "vae").eval()
    rates = round_trip_rates(vae, n=32)
    assert set(rates) == {"world", "world_two_colour", *SUBJECTS}
    assert rates["star"] >= 0.9 and rates["circle"] >= 0.95, rates
    assert rates["world"] >= 0.95 and rates["world_two_colour"] >= 0.9, rates
