"""Aspect-ratio bucketing: bucket sizes, assignment, the bucket-aware sample order, SDXL time ids and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from moslora_diffusion.tiny import save_tiny_pipeline
from moslora_diffusion.training import (
    TrainConfigError,
    data,
    models,
    parse_args,
    run_training,
    validate_config,
)
from moslora_diffusion.training import buckets as B


def test_bucket_sizes_are_step_multiples_within_area_and_limits():
    sizes = B.bucket_sizes(512, 64, 256, 1024)
    assert (512, 512) in sizes and (384, 640) in sizes and (640, 384) in sizes
    for w, h in sizes:
        assert w % 64 == 0 and h % 64 == 0
        assert 256 <= w <= 1024 and 256 <= h <= 1024
        assert w * h <= 512 * 512
    assert sizes == sorted(set(sizes))


def test_images_go_to_the_bucket_of_the_closest_aspect_ratio():
    sizes = B.bucket_sizes(512, 64, 256, 1024)
    for w, h in [(3000, 4000), (4000, 3000), (1080, 1920), (800, 800), (1500, 500)]:
        bw, bh = B.choose_bucket((w, h), sizes, 512, 64)
        best = min(abs(math.log(sw / sh) - math.log(w / h)) for sw, sh in sizes)
        assert abs(math.log(bw / bh) - math.log(w / h)) == pytest.approx(best)
        assert (bw > bh) == (w > h) or w == h
    assert B.choose_bucket((800, 800), sizes, 512, 64) == (512, 512)  # the larger of equal ratios


def test_no_upscale_keeps_small_images_small_and_shrinks_large_ones():
    sizes = B.bucket_sizes(512, 64, 256, 1024)
    assert B.choose_bucket((200, 330), sizes, 512, 64, no_upscale=True) == (192, 320)
    bw, bh = B.choose_bucket((2000, 1000), sizes, 512, 64, no_upscale=True)
    assert bw * bh <= 512 * 512 and bw % 64 == 0 and bh % 64 == 0 and bw > bh
    assert B.assign_buckets([(200, 330)], 512, 64, no_upscale=True) == [(192, 320)]


def test_bucket_order_batches_stay_in_one_bucket_cover_every_image_and_repeat_exactly():
    bucket_of = [(64, 32)] * 5 + [(32, 64)] * 3 + [(48, 48)] * 1
    order = B.BucketOrder(bucket_of, batch_size=2, num_processes=2, seed=7)
    per_epoch = order.micro_batches_per_epoch()
    assert per_epoch == 2 + 1 + 1
    again = B.BucketOrder(list(bucket_of), batch_size=2, num_processes=2, seed=7)
    for epoch in range(3):
        seen = set()
        for u in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            both = order.items(u, 0) + order.items(u, 1)
            assert {bucket_of[i] for i, _ in both} and len({bucket_of[i] for i, _ in both}) == 1
            assert [p for _, p in both] == list(range(u * 4, u * 4 + 4))
            seen.update(i for i, _ in both)
            assert order.items(u, 1) == again.items(u, 1)  # a pure function of (seed, micro-batch)
        assert seen == set(range(len(bucket_of)))
    assert order.epoch_batches(0) != order.epoch_batches(1)  # reshuffled per epoch


def test_preprocess_into_a_bucket_records_sizes_and_crop():
    im = Image.new("RGB", (90, 60), (10, 20, 30))
    ex = data.preprocess(im, "x", (48, 40), center_crop=True, random_flip=False, generator=None)
    assert ex.pixels.shape == (3, 40, 48)
    assert ex.original_size == (60, 90) and ex.target_size == (40, 48)
    assert ex.crop_top_left == (0, (60 - 48) // 2)  # resized to 60x40, centre-cropped to 48 wide
    assert not data.crop_is_random((90, 60), False, (60, 40))  # same aspect ratio: nothing to crop
    assert data.crop_is_random((90, 60), False, (48, 40))


def test_bucket_flags_are_checked():
    base = ["--pretrained_model_name_or_path", "x", "--instance_data_dir", "y", "--instance_prompt", "z"]
    with pytest.raises(TrainConfigError, match="--min_bucket_side needs --bucket"):
        validate_config(parse_args(base + ["--min_bucket_side", "256"]))
    with pytest.raises(TrainConfigError, match="multiple of --bucket_step"):
        validate_config(parse_args(base + ["--bucket", "--max_bucket_side", "1000"]))
    with pytest.raises(TrainConfigError, match="larger than --max_bucket_side"):
        validate_config(
            parse_args(base + ["--bucket", "--min_bucket_side", "512", "--max_bucket_side", "256"])
        )


# ----------------------------------------------------------------------------- training with buckets


SIZES = [(64, 32), (32, 64), (40, 40), (72, 40), (36, 60)]


def mixed_images(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(SIZES):
        im = Image.new("RGB", size, (40 * i, 180, 90))
        ImageDraw.Draw(im).ellipse((2, 2, size[0] - 3, size[1] - 3), fill=(200, 20, 30 * i))
        im.save(folder / f"img{i}.png")
    return folder


def _train(model: Path, out: Path, images: Path, *flags: str, **kwargs):
    argv = ["--pretrained_model_name_or_path", str(model), "--instance_data_dir", str(images),
            "--instance_prompt", "a sks blob", "--output_dir", str(out), "--resolution", "32", "--seed", "0",
            "--learning_rate", "1e-3", "--bucket", "--bucket_step", "8", *flags]  # fmt: skip
    return run_training(parse_args(argv), **kwargs)


def test_sdxl_batches_are_one_bucket_with_time_ids_per_image(tmp_path, monkeypatch, capsys):
    model = save_tiny_pipeline("sdxl", tmp_path / "sdxl")
    images = mixed_images(tmp_path / "images")
    expected_bucket = dict(zip(SIZES, B.assign_buckets(SIZES, 32, 8)))
    seen = []
    real = models.sdxl_time_ids

    def recording(original_sizes, crops, targets):
        out = real(original_sizes, crops, targets)
        seen.append(out)
        return out

    monkeypatch.setattr(models, "sdxl_time_ids", recording)
    result = _train(
        model,
        tmp_path / "out",
        images,
        "--max_train_steps",
        "6",
        "--train_batch_size",
        "2",
        "--center_crop",
        "--checkpointing_steps",
        "0",
        "--no-signals",
    )  # fmt: skip (probes: square)
    assert result.steps_done == 6
    assert "aspect-ratio buckets" in capsys.readouterr().out  # the histogram is shown at start
    rows_by_original = {}
    for ids in seen:
        assert ids.shape == (2, 6)
        assert len({tuple(r[4:].tolist()) for r in ids}) == 1  # one bucket per batch
        for row in ids.tolist():
            h, w = int(row[0]), int(row[1])
            rows_by_original[(w, h)] = row
    assert set(rows_by_original) <= set(SIZES) and len(rows_by_original) >= 3
    for (w, h), row in rows_by_original.items():
        bw, bh = expected_bucket[(w, h)]
        ex = data.preprocess(Image.new("RGB", (w, h)), "x", (bw, bh), True, False, None)
        assert row == [h, w, *ex.crop_top_left, bh, bw]


def test_resume_with_buckets_equals_an_uninterrupted_run(tmp_path):
    model = save_tiny_pipeline("sd1", tmp_path / "sd1")
    images = mixed_images(tmp_path / "images")
    flags = [
        "--max_train_steps",
        "5",
        "--random_flip",
        "--train_batch_size",
        "2",
        "--checkpointing_steps",
        "10",
    ]
    full = _train(model, tmp_path / "full", images, *flags)
    done = []
    stopped = _train(model, tmp_path / "split", images, *flags,
                     callback=lambda e: done.append(e.step) if e.kind == "step" else None,
                     should_stop=lambda: len(done) >= 2)  # fmt: skip
    assert stopped.cancelled and stopped.steps_done == 2
    resumed = _train(model, tmp_path / "split", images, *flags, "--resume_from_checkpoint", "latest")
    assert resumed.steps_done == 5
    from safetensors.torch import load_file

    a, b = load_file(str(full.weights_path)), load_file(str(resumed.weights_path))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
