"""No work before the first step that the first step does not need: images decoded once, latents and
prompt embeddings encoded on first use (and still exact on resume: test_training_e2e's resume test)."""

from __future__ import annotations

from PIL import Image

from moslora_diffusion.training import batches, data, parse_args, run_training


def test_images_decoded_once_and_latents_encoded_lazily(tiny_dirs, tmp_path, monkeypatch):
    subject = tmp_path / "subject"
    subject.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (50 * i, 120, 200)).save(subject / f"s{i}.png")
    decoded, encoded = [], []
    real_load, real_stats = data.load_image, batches.latent_stats
    monkeypatch.setattr(data, "load_image", lambda p: (decoded.append(p), real_load(p))[1])
    monkeypatch.setattr(
        batches, "latent_stats", lambda run, px: (encoded.append(px.shape[0]), real_stats(run, px))[1]
    )
    argv = [
        "--pretrained_model_name_or_path", str(tiny_dirs["sd1"]), "--instance_data_dir", str(subject),
        "--instance_prompt", "a sks blob", "--output_dir", str(tmp_path / "out"), "--resolution", "32",
        "--seed", "0", "--max_train_steps", "1", "--train_batch_size", "1", "--checkpointing_steps", "0",
    ]  # fmt: skip
    result = run_training(parse_args(argv))
    assert result.steps_done == 1
    assert sorted(p.name for p in decoded) == [
        f"s{i}.png" for i in range(4)
    ]  # each image once, preflight none
    # one step of batch 1 encoded one image, not all four up front; the learning signals' probes encode the
    # (at most four) instance images once, at the first validation, after the first step
    assert encoded == [1, 4]
