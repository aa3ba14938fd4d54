"""--dataset_config (training/dataset_config.py): kohya-ss's dataset TOML — precedence, refusals, the command
line as its one-dataset case (same adapter bit for bit), several concepts, caption augmentation, exact resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from moslora_diffusion.training import TrainConfigError, parse_args, run_training, validate_config
from moslora_diffusion.training.dataset_config import CaptionAugment, read_dataset_config
from tests.test_training_e2e import make_subject, read_tensors, train


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dc-data")
    return {
        name: make_subject(root / name, n=n, size=(40, 36))
        for name, n in (("dog", 3), ("cat", 2), ("reg", 4))
    }


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dataset.toml"
    path.write_text(text)
    return path


def _train_toml(model, out, toml, *flags, **kwargs):
    argv = ["--pretrained_model_name_or_path", str(model), "--dataset_config", str(toml), "--output_dir", str(out),
            "--seed", "0", "--learning_rate", "1e-3", "--no-signals", *flags]  # fmt: skip
    return run_training(parse_args(argv), **kwargs)


def test_precedence_general_dataset_subset(folders, tmp_path):
    toml = _toml(
        tmp_path,
        f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
resolution = 32
[[datasets]]
batch_size = 2
keep_tokens = 2
  [[datasets.subsets]]
  image_dir = "{folders["dog"]}"
  class_tokens = "sks dog"
  num_repeats = 3
  [[datasets.subsets]]
  image_dir = "{folders["cat"]}"
  class_tokens = "xyz cat"
  keep_tokens = 3
  flip_aug = true
  [[datasets.subsets]]
  image_dir = "{folders["reg"]}"
  class_tokens = "dog"
  is_reg = true
""",
    )
    plan = read_dataset_config(toml)
    dog, cat, reg = plan.subsets
    assert plan.settings == {"resolution": 32, "train_batch_size": 2}
    assert (dog.captions, cat.captions) == (CaptionAugment(True, 2, 0.0), CaptionAugment(True, 3, 0.0))
    assert dog.repeats == 3 and cat.repeats == 1 and not dog.flip and cat.flip
    assert dog.caption_extension == ".txt" and dog.center_crop  # kohya: centre crop unless random_crop
    assert reg.is_reg and not dog.is_reg and reg.caption == "dog"
    assert [s.image_dir for s in plan.instance_subsets] == [str(folders["dog"]), str(folders["cat"])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[general]\nfoo = 1\n[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'",
            r"\[general\]: key 'foo' is not supported",
        ),
        (
            "[[datasets]]\nmystery = 2\n[[datasets.subsets]]\nimage_dir='x'",
            r"\[\[datasets\]\] #1: key 'mystery'",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\ncaption_prefix='a'",
            r"subsets\]\] #1: key 'caption_prefix'",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\ncolor_aug=true",
            "color_aug = true' is not supported",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\nnum_repeats='3'",
            "'num_repeats' must be an integer",
        ),
        ("[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\nflip_aug=1", "'flip_aug' must be true or false"),
        ("[[datasets]]\n[[datasets.subsets]]\nclass_tokens='x'", "'image_dir' is required"),
        ("[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\nis_reg=true", "every subset is is_reg"),
        ("[general]\nresolution=32", r"no \[\[datasets\]\] table"),
        ("[[datasets]]\nresolution=[32, 48]\n[[datasets.subsets]]\nimage_dir='x'", "square"),
        (
            "[[datasets]]\nresolution=32\n[[datasets.subsets]]\nimage_dir='x'\n[[datasets]]\nresolution=64\n"
            "[[datasets.subsets]]\nimage_dir='y'",
            "#2 differs from #1 in 'resolution'",
        ),
        ("[[datasets]\n", "not valid TOML"),
        ("[[datasets]]\n[[datasets.subsets]]\nimage_dir='x'\ncaption_dropout_rate=1.5", "between 0 and 1"),
    ],
)
def test_unsupported_or_bad_keys_are_named_with_the_file(tmp_path, text, message):
    toml = _toml(tmp_path, text)
    with pytest.raises(TrainConfigError, match=message) as info:
        read_dataset_config(toml)
    assert str(toml) in str(info.value)


def test_data_flags_next_to_a_dataset_file_are_refused(tiny_sd1, folders, tmp_path):
    toml = _toml(
        tmp_path,
        f"[general]\nresolution = 32\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{folders['dog']}'\nclass_tokens = 'sks dog'\n",
    )
    base = [
        "--pretrained_model_name_or_path",
        str(tiny_sd1),
        "--dataset_config",
        str(toml),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    with pytest.raises(
        TrainConfigError, match="--instance_data_dir and --dataset_config both describe the data"
    ):
        validate_config(parse_args([*base, "--instance_data_dir", str(folders["dog"])]))
    with pytest.raises(TrainConfigError, match="--resolution 64 disagrees with --dataset_config"):
        validate_config(parse_args([*base, "--resolution", "64"]))
    validate_config(parse_args([*base, "--resolution", "32"]))  # the same value is fine
    missing = _toml(
        tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'nowhere'\nclass_tokens = 'a'\n"
    )
    with pytest.raises(TrainConfigError, match=r"subset #1 image_dir: .*nowhere does not exist"):
        validate_config(parse_args([*base[:3], str(missing), *base[4:]]))
    uncaptioned = _toml(tmp_path, f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{folders['dog']}'\n")
    with pytest.raises(TrainConfigError, match=r"no \.caption caption file and no class_tokens"):
        validate_config(parse_args([*base[:3], str(uncaptioned), *base[4:]]))
    assert not (tmp_path / "o").exists()


def test_the_command_line_is_the_one_dataset_case(tiny_sd1, folders, tmp_path):
    """The same data as flags and as a dataset file trains the same adapter, bit for bit."""
    flags = ("--max_train_steps", "3", "--random_flip", "--repeats", "2", "--with_prior_preservation",
             "--class_data_dir", str(folders["reg"]), "--class_prompt", "a blob", "--num_class_images", "4",
             "--no-signals")  # fmt: skip
    cli = train(tiny_sd1, tmp_path / "cli", folders["dog"], *flags)
    toml = _toml(
        tmp_path,
        f"""
[general]
resolution = 32
flip_aug = true
random_crop = true
caption_extension = ".txt"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{folders["dog"]}"
  class_tokens = "a sks blob"
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = "{folders["reg"]}"
  class_tokens = "a blob"
  is_reg = true
""",
    )
    from_file = _train_toml(tiny_sd1, tmp_path / "toml", toml, "--max_train_steps", "3")
    a, b = read_tensors(cli.weights_path), read_tensors(from_file.weights_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_concepts_share_the_epoch_by_their_repeats(tiny_sd1, folders, tmp_path):
    from moslora_diffusion.training.batches import _batch_items
    from moslora_diffusion.training.loop import Trainer
    from moslora_diffusion.training.run_setup import make_accelerator

    toml = _toml(
        tmp_path,
        f"""
[general]
resolution = 32
[[datasets]]
  [[datasets.subsets]]
  image_dir = "{folders["dog"]}"
  class_tokens = "sks dog"
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = "{folders["cat"]}"
  class_tokens = "xyz cat"
  num_repeats = 3
""",
    )
    cfg = parse_args(["--pretrained_model_name_or_path", str(tiny_sd1), "--dataset_config", str(toml),
                      "--output_dir", str(tmp_path / "o"), "--seed", "1"])  # fmt: skip
    validate_config(cfg)
    from moslora_diffusion.training.dataset_config import with_dataset_settings

    cfg = with_dataset_settings(cfg)
    trainer = Trainer.setup(cfg, make_accelerator(cfg), None)
    run = trainer.run
    epoch = len(run.instance_slots)
    assert epoch == 3 * 2 + 2 * 3
    seen = Counter(run.instances[idx].caption for u in range(epoch) for _, idx, _, _ in _batch_items(run, u))
    assert seen == {"sks dog": 6, "xyz cat": 6}  # each image num_repeats times per epoch
    trainer.resume()
    trainer.validate()  # the learning signals work from a dataset file: subject fit on the concepts' images
    assert trainer.signals and "subject_fit" in trainer.signals[-1]


def test_caption_shuffle_keeps_the_first_tokens_and_dropout_empties():
    augment = CaptionAugment(shuffle=True, keep_tokens=2, dropout_rate=0.0)
    caption = "sks dog, red, small, grass, sunny"
    seen = set()
    for i in range(60):
        out = augment.apply(caption, torch.Generator().manual_seed(i))
        assert out.startswith("sks dog, red, ") and sorted(out.split(", ")) == sorted(caption.split(", "))
        seen.add(out)
    assert len(seen) == 6  # all 3! orders of the rest
    assert augment.apply(caption, torch.Generator().manual_seed(5)) == augment.apply(
        caption, torch.Generator().manual_seed(5)
    )
    assert CaptionAugment(dropout_rate=1.0).apply(caption, torch.Generator().manual_seed(0)) == ""
    drops = sum(
        CaptionAugment(dropout_rate=0.3).apply(caption, torch.Generator().manual_seed(i)) == ""
        for i in range(400)
    )
    assert 80 < drops < 160


def test_several_concepts_with_augmentation_resume_exactly(tiny_sd1, folders, tmp_path):
    dog = make_subject(tmp_path / "dog", n=3, size=(40, 36))
    for i, name in enumerate(("a", "b")):  # captions in kohya's default .caption files
        (dog / f"subject{i}.caption").write_text(f"sks dog, {name}, grass, sunny")
    toml = _toml(
        tmp_path,
        f"""
[general]
resolution = 32
shuffle_caption = true
keep_tokens = 1
caption_dropout_rate = 0.2
[[datasets]]
batch_size = 2
  [[datasets.subsets]]
  image_dir = "{dog}"
  class_tokens = "sks dog"
  flip_aug = true
  [[datasets.subsets]]
  image_dir = "{folders["cat"]}"
  class_tokens = "xyz cat"
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = "{folders["reg"]}"
  class_tokens = "a blob"
  is_reg = true
""",
    )
    flags = ("--max_train_steps", "4", "--checkpointing_steps", "2")
    whole = _train_toml(tiny_sd1, tmp_path / "whole", toml, *flags)
    _train_toml(tiny_sd1, tmp_path / "half", toml, "--max_train_steps", "2", "--checkpointing_steps", "2")
    resumed = _train_toml(tiny_sd1, tmp_path / "half", toml, *flags, "--resume_from_checkpoint", "latest")
    a, b = read_tensors(whole.weights_path), read_tensors(resumed.weights_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "whole" / "README.md").read_text()
    assert (
        "| `cat` | `xyz cat` | 2 | concept |" in card and "| `reg` | `a blob` | 1 | regularisation |" in card
    )
    # a changed caption file is another data set: the run refuses to resume it
    (dog / "subject0.caption").write_text("sks dog, changed")
    with pytest.raises(TrainConfigError, match="belongs to another run .instance data: differs"):
        _train_toml(
            tiny_sd1, tmp_path / "half", toml, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"
        )
