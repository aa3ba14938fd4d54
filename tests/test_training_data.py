"""Training pieces without models: image reading, captions, preprocessing, sample order, loss formulas."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from moslora_diffusion.training import data, losses


def test_exif_orientation_rgba_and_greyscale(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert data.load_image(tmp_path / "rot.jpg").size == (20, 40)

    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "alpha.png")
    out = data.load_image(tmp_path / "alpha.png")
    assert (
        out.mode == "RGB" and out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)
    )

    Image.new("L", (8, 8), 77).save(tmp_path / "grey.webp", lossless=True)
    grey = data.load_image(tmp_path / "grey.webp")
    assert grey.mode == "RGB" and grey.getpixel((3, 3)) == (77, 77, 77)


def test_caption_precedence(tmp_path):
    for name in ("a", "b", "c"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "b.txt").write_text("caption from txt\n")
    (tmp_path / "c.txt").write_text("overridden")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "c.png", "text": "caption from jsonl"}) + "\n"
    )
    found = data.scan_images(tmp_path, "default prompt")
    assert dict(zip([p.name for p in found.paths], found.captions)) == {
        "a.png": "default prompt",
        "b.png": "caption from txt",
        "c.png": "caption from jsonl",
    }
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "c.png"}\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl, line 1"):
        data.scan_images(tmp_path, "x")


def test_preprocess_center_and_random_crop():
    im = Image.new("RGB", (64, 32), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 32, 32))  # left half white
    ex = data.preprocess(im, "c", 16, center_crop=True, random_flip=False, generator=None)
    assert ex.pixels.shape == (3, 16, 16) and ex.original_size == (32, 64) and ex.crop_top_left == (0, 8)
    assert -1.0 <= ex.pixels.min() and ex.pixels.max() <= 1.0
    crops = {
        data.preprocess(im, "c", 16, False, False, data.augmentation_generator(0, pos)).crop_top_left
        for pos in range(20)
    }
    assert len(crops) > 3
    again = data.preprocess(im, "c", 16, False, True, data.augmentation_generator(0, 5))
    assert torch.equal(
        again.pixels, data.preprocess(im, "c", 16, False, True, data.augmentation_generator(0, 5)).pixels
    )


def test_crop_is_random_only_for_non_square_without_center_crop():
    assert data.crop_is_random((64, 32), center_crop=False)
    assert not data.crop_is_random((64, 32), center_crop=True)
    assert not data.crop_is_random((32, 32), center_crop=False)


def test_sample_order_covers_each_epoch_and_splits_processes():
    order = data.SampleOrder(num_examples=5, batch_size=2, num_processes=2, seed=3)
    stream = [order.index_at(p) for p in range(10)]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    assert order.positions(1, 0) == [4, 5] and order.positions(1, 1) == [6, 7]
    assert order.micro_batches_per_epoch() == 2
    assert stream == [data.SampleOrder(5, 2, 2, 3).index_at(p) for p in range(10)]


def test_min_snr_weights_match_hand_computation():
    alphas = torch.tensor([0.9, 0.5, 0.1])
    t = torch.tensor([0, 1, 2])
    snr = alphas / (1 - alphas)  # 9, 1, 0.111
    gamma = 5.0
    eps = losses.min_snr_weights(alphas, t, gamma, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([5 / 9, 1.0, 1.0]))
    v = losses.min_snr_weights(alphas, t, gamma, "v_prediction")
    torch.testing.assert_close(v, torch.minimum(snr, torch.tensor(gamma)) / (snr + 1))


def test_prediction_targets_and_prior_loss():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=100)
    x0, noise, t = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2), torch.tensor([10, 90])
    assert losses.prediction_target(sched, "epsilon", x0, noise, t) is noise
    a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(
        losses.prediction_target(sched, "v_prediction", x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0
    )
    per = torch.tensor([1.0, 3.0, 10.0, 20.0])
    total, prior = losses.dreambooth_loss(per, num_instance=2, prior_loss_weight=0.5)
    assert float(total) == pytest.approx(2.0 + 0.5 * 15.0) and float(prior) == pytest.approx(15.0)
    assert losses.dreambooth_loss(per[:2], 2)[1] is None


def test_noise_offset_adds_per_channel_constant():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    latents = torch.zeros(2, 4, 8, 8)
    plain = losses.sample_noise(latents, g1)
    offset = losses.sample_noise(latents, g2, noise_offset=0.1)
    diff = offset - plain
    assert diff.abs().max() > 0 and torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff), atol=1e-6)
