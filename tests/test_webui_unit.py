"""Web UI pieces without a server: infotext, adapter names and fit checks, request limits, grid, uploads,
and the training job driven by a stand-in training backend."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moslora_diffusion.architectures import normalize as normalize_architecture
from moslora_diffusion.errors import AdapterMismatchError, AdapterNameError, JobBusy
from moslora_diffusion.webui.adapter_files import list_adapters, safe_adapter_path
from moslora_diffusion.webui.compare import labelled_grid, parse_seeds, parse_strengths
from moslora_diffusion.webui.jobs import TrainingJobs, TrainRequest, UploadLimits, decode_uploads
from moslora_diffusion.webui.pngmeta import format_parameters, parse_parameters, read_parameters, save_png
from moslora_diffusion.webui.requests import GenerationRequest, Limits, validate_request
from tests.webui_support import FakeTraining, make_tiny_setup, write_plain_lora

# ---- PNG infotext ---------------------------------------------------------------------------------------


def test_parameters_round_trip_through_png(tmp_path):
    fields = {
        "Steps": 20,
        "Sampler": "DPM++ 2M",
        "CFG scale": "7.5",
        "Seed": 1234,
        "Size": "64x48",
        "Model": "base",
        "Adapters": "a.safetensors: 0.8, b.safetensors: -0.5",
    }
    text = format_parameters("a red circle, blue background", "blurry", fields)
    assert text.splitlines()[0] == "a red circle, blue background"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert 'Adapters: "a.safetensors: 0.8, b.safetensors: -0.5"' in text  # quoted: holds commas/colons
    path = save_png(Image.new("RGB", (8, 8), "red"), tmp_path, "img", text)
    assert path.name == "img.png" and not list(tmp_path.glob("*.tmp"))
    assert read_parameters(path) == text
    parsed = parse_parameters(read_parameters(path))
    assert parsed["Prompt"] == "a red circle, blue background"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Sampler"] == "DPM++ 2M" and parsed["Seed"] == "1234" and parsed["Size"] == "64x48"
    assert parsed["Adapters"] == "a.safetensors: 0.8, b.safetensors: -0.5"


# ---- adapter names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../plain.safetensors",
        "..",
        "sub/plain.safetensors",
        "sub\\plain.safetensors",
        "/etc/passwd",
        ".hidden.safetensors",
        "plain.bin",
        "",
        "missing.safetensors",
    ],
)
def test_adapter_names_outside_the_folder_are_refused(tmp_path, name):
    (tmp_path / "plain.safetensors").write_bytes(b"x")
    with pytest.raises(AdapterNameError):
        safe_adapter_path(tmp_path, name)


def test_symlink_leading_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "ok.safetensors").write_bytes(b"x")
    (folder / "link.safetensors").symlink_to(outside)
    assert safe_adapter_path(folder, "ok.safetensors") == (folder / "ok.safetensors").resolve()
    with pytest.raises(AdapterNameError, match="outside"):
        safe_adapter_path(folder, "link.safetensors")
    assert list_adapters(folder) == ["ok.safetensors"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sd1", "sd1"),
        ("sdxl", "sdxl"),
        ("sdxl_base_v1-0", "sdxl"),
        ("sd_v1", "sd1"),
        ("sd_v2", "sd2"),
        (None, None),
    ],
)
def test_architecture_spellings(value, expected):
    assert normalize_architecture(value) == expected


# ---- request limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"steps": 0}, "steps"),
        ({"steps": 151}, "steps"),
        ({"steps": 2.5}, "whole number"),
        ({"steps": "ten"}, "whole number"),
        ({"width": 36}, "multiple of 8"),
        ({"height": 4096}, "height"),
        ({"width": 16}, "width"),
        ({"guidance_scale": float("nan")}, "finite"),
        ({"guidance_scale": 31}, "CFG"),
        ({"seed": -2}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"num_images": 9}, "number of images"),
        ({"scheduler": "Heun++"}, "unknown scheduler"),
        ({"adapters": [("a.safetensors", 2.5)]}, "strength"),
        ({"adapters": [("a.safetensors", 1.0)] * 5}, "at most 4"),
        ({"prompt": "x" * 2001}, "longer than"),
    ],
)
def test_bad_numbers_are_refused(change, message):
    fields = {"prompt": "a red circle", "width": 32, "height": 32, "scheduler": "DDIM", **change}
    req = GenerationRequest(**fields)
    with pytest.raises(ValueError, match=message):
        validate_request(req, Limits())


def test_valid_request_is_normalised():
    req = validate_request(
        GenerationRequest(prompt=" hi ", steps=10.0, seed=-1, width=64.0, height=32, adapters=[("a", "0.5")]),
        Limits(),
    )
    assert (req.prompt, req.steps, req.width, req.adapters) == ("hi", 10, 64, [("a", 0.5)])
    assert isinstance(req.steps, int) and isinstance(req.width, int)


# ---- comparison grid ------------------------------------------------------------------------------------


def test_strength_and_seed_lists():
    assert parse_strengths("0, 0.5 1.0, 0.5, -1") == [0.5, 1.0, -1.0]
    assert parse_seeds("3, 1 3") == [3, 1]
    for bad in ("", "a", "3", "inf"):
        with pytest.raises(ValueError):
            parse_strengths(bad)
    for bad in ("-1", "1.5", str(2**32)):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_labelled_grid_places_cells_and_labels():
    colours = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(255, 255, 0), (0, 255, 255), (255, 0, 255)]]
    rows = [[Image.new("RGB", (32, 32), c) for c in row] for row in colours]
    grid = labelled_grid(rows, ["seed 1", "seed 2"], ["no adapter", "strength 0.5", "strength 1"], title="t")
    arr = np.asarray(grid)
    # cells are upscaled to 128 px; every colour appears as a solid block
    for row in colours:
        for c in row:
            assert (np.all(arr == np.array(c, dtype=np.uint8), axis=-1)).sum() >= 128 * 128
    # labels are drawn: the white margins hold dark text pixels
    assert (arr[:40].min(axis=-1) < 100).any()
    assert grid.width > 3 * 128 and grid.height > 2 * 128


# ---- uploads --------------------------------------------------------------------------------------------


def _images(folder: Path, n: int, size=(16, 16)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        Image.new("RGB", size, (10 * i, 0, 0)).save(p)
        paths.append(str(p))
    return paths


def test_uploads_decoded_and_limited(tmp_path):
    paths = _images(tmp_path / "in", 3)
    out = decode_uploads(paths, tmp_path / "out", UploadLimits())
    assert [p.name for p in out] == ["000.png", "001.png", "002.png"]
    assert all(Image.open(p).format == "PNG" for p in out)
    with pytest.raises(ValueError, match="between 3 and 30"):
        decode_uploads(paths[:2], tmp_path / "o2", UploadLimits())
    with pytest.raises(ValueError, match="between 3 and 30"):
        decode_uploads(paths * 11, tmp_path / "o3", UploadLimits())
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png"):
        decode_uploads([*paths[:2], str(text)], tmp_path / "o4", UploadLimits())
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(ValueError, match="GIF files are not accepted"):
        decode_uploads([*paths[:2], str(gif)], tmp_path / "o5", UploadLimits())
    big = _images(tmp_path / "big", 3, size=(200, 200))
    with pytest.raises(ValueError, match="pixels is more than the limit"):
        decode_uploads(big, tmp_path / "o6", UploadLimits(max_pixels=100 * 100))


# ---- training job with a stand-in backend ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    return write_plain_lora("sd1", tmp_path_factory.mktemp("lora") / "src.safetensors")


def test_training_job_reports_progress_and_installs_adapter(tmp_path, lora_file):
    backend = FakeTraining(lora_file)
    adapters = tmp_path / "adapters"
    jobs = TrainingJobs("base", adapters, tmp_path / "work", backend=backend)
    req = TrainRequest(images=_images(tmp_path / "in", 3), instance_prompt="a photo of sks toy",
                       adapter_name="toy", steps=8, rank=4, class_prompt="a photo of a toy")  # fmt: skip
    jobs.start(req)
    st = jobs.wait(20)
    assert st.state == "done", st.message
    assert st.step == 8 and st.max_steps == 8
    assert [s for s, _ in st.losses] == list(range(1, 9)) and st.losses[-1][1] == pytest.approx(1 / 8)
    assert st.preview is not None and st.preview_step == 8
    assert st.adapter_name == "toy.safetensors" and st.finished == 1
    assert (adapters / "toy.safetensors").read_bytes() == lora_file.read_bytes()
    with Image.open(adapters / "toy.preview.png") as sample:  # the last preview is its card's sample image
        assert np.array_equal(np.asarray(sample.convert("RGB")), np.asarray(st.preview.convert("RGB")))
    cfg = backend.configs[0]
    assert cfg.with_prior_preservation and cfg.class_prompt == "a photo of a toy"
    assert (
        cfg.max_train_steps == 8 and cfg.rank == 4 and cfg.adapter == "moslora" and cfg.validation_steps == 2
    )
    # the name is now taken
    with pytest.raises(ValueError, match="already exists"):
        jobs.start(req)


def test_training_job_one_at_a_time_and_cancel(tmp_path, lora_file):
    gate = threading.Event()
    jobs = TrainingJobs(
        "base", tmp_path / "adapters", tmp_path / "work", backend=FakeTraining(lora_file, gate=gate)
    )
    images = _images(tmp_path / "in", 3)
    jobs.start(TrainRequest(images=images, instance_prompt="sks", adapter_name="a", steps=1000))
    with pytest.raises(JobBusy):
        jobs.start(TrainRequest(images=images, instance_prompt="sks", adapter_name="b", steps=10))
    assert jobs.cancel().state == "cancelling"
    gate.set()
    st = jobs.wait(20)
    assert st.state == "cancelled" and "no adapter saved" in st.message
    assert not (tmp_path / "adapters" / "a.safetensors").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adapter_name": "../evil"}, "adapter name"),
        ({"instance_prompt": " "}, "instance prompt"),
        ({"steps": 0}, "steps"),
        ({"rank": 1000}, "rank"),
        ({"learning_rate": 1.0}, "learning rate"),
        ({"adapter": "dora"}, "adapter type"),
        ({"images": []}, "upload"),
    ],
)
def test_training_request_checked_before_start(tmp_path, lora_file, change, message):
    jobs = TrainingJobs("base", tmp_path / "adapters", tmp_path / "work", backend=FakeTraining(lora_file))
    fields = {"images": _images(tmp_path / "in", 3), "instance_prompt": "sks", "adapter_name": "x", **change}
    with pytest.raises(ValueError, match=message):
        jobs.start(TrainRequest(**fields))
    assert jobs.status().state == "idle"


# ---- engine on a tiny pipeline --------------------------------------------------------------------------


def test_adapter_for_other_architecture_refused_before_loading(tmp_path):
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    info = engine.adapter_info("plain.safetensors")
    assert info["rank"] == 4 and info["kind"] == "diffusers" and list(info["components"]) == ["unet"]
    with pytest.raises(AdapterMismatchError, match=r"attn2.to_k.lora_A.weight. has shape \(4, 64\)"):
        engine.adapter_info("xl_only.safetensors")
    req = GenerationRequest(prompt="a", steps=1, width=32, height=32, adapters=[("xl_only.safetensors", 1.0)])
    with pytest.raises(AdapterMismatchError):
        engine.generate(req)
    assert engine.pipe.get_list_adapters() == {}  # nothing half-loaded


# ---- command line ---------------------------------------------------------------------------------------


def test_command_line_defaults_and_missing_base_model(monkeypatch, tmp_path):
    from moslora_diffusion.webui import server

    args = server.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.auth) == ("127.0.0.1", 7860, False, None)
    assert args.adapters_dir == "adapters" and args.base_model is None
    monkeypatch.setattr(server, "default_base_model", lambda: None)
    with pytest.raises(SystemExit, match="no --base_model given"):
        server.create_app(server.build_parser().parse_args(["--adapters_dir", str(tmp_path / "a")]))


def test_launcher_help_runs():
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "app" / "app.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--base_model", "--adapters_dir", "--host", "--port", "--auth", "--share"):
        assert flag in out.stdout


def test_train_status_line_names_events_not_server_paths(tmp_path, lora_file):
    """Issue "Web UI for daily use", bugs 1 and 2: no raw paths in the status; "cancelling" is not overwritten."""
    from moslora_diffusion.training.events import TrainEvent

    gate = threading.Event()
    jobs = TrainingJobs(
        "base", tmp_path / "adapters", tmp_path / "work", backend=FakeTraining(lora_file, gate=gate)
    )
    jobs.start(
        TrainRequest(images=_images(tmp_path / "in", 3), instance_prompt="sks", adapter_name="a", steps=50)
    )
    server_path = str(tmp_path / "work" / "output")
    jobs._on_event(TrainEvent("validation", 25, 50, message=f"{server_path}/validation/step-000025.png"))
    assert jobs.status().message == "step 25: preview updated"
    jobs._on_event(TrainEvent("checkpoint", 30, 50, message=f"{server_path}/checkpoint-30"))
    assert jobs.status().message == "step 30: checkpoint saved"
    jobs.cancel()
    jobs._on_event(TrainEvent("checkpoint", 31, 50, message=f"{server_path}/checkpoint-31"))
    st = jobs.status()
    assert st.message.startswith("cancelling") and "step 31: checkpoint saved" in st.message
    assert server_path not in st.message
    gate.set()
    assert jobs.wait(20).state == "cancelled"


def test_prompt_token_count_against_the_encoder_limit(tmp_path):
    """Issue "Web UI for daily use", bug 6: the count the page shows, and when a prompt is cut off."""
    from moslora_diffusion.webui.engine import Engine
    from moslora_diffusion.webui.widgets import token_count as _token_count

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    tok = engine.pipe.tokenizer
    short, limit = engine.prompt_tokens("a red square")
    assert limit == tok.model_max_length - 2  # start and end tokens take two places
    assert short == len(tok("a red square").input_ids) - 2 > 0
    long_prompt = "a red square on a blue background " * 10
    used, _ = engine.prompt_tokens(long_prompt)
    assert used > limit
    assert "cut off" in _token_count(engine, long_prompt) and "cut off" not in _token_count(
        engine, "a red square"
    )
    # what the pipeline really encodes stops at the limit: the tail makes no difference
    ids = tok(long_prompt, padding="max_length", truncation=True, max_length=tok.model_max_length).input_ids
    assert len(ids) == tok.model_max_length
    # <lora:…> tags are taken out before encoding, so they are not counted (issue 25, bug 3), even a bad one
    assert engine.prompt_tokens("a red square <lora:sks-circle:0.8>") == (short, limit)
    assert engine.prompt_tokens("<lora:x:not-a-number> a red square") == (short, limit)


@pytest.mark.parametrize(
    ("prompt", "clean", "adapters"),
    [
        ("a cat <lora:style:0.6>", "a cat", [("style.safetensors", 0.6)]),
        ("<lora:a><LORA:b.safetensors:-1> dog", "dog", [("a.safetensors", 1.0), ("b.safetensors", -1.0)]),
        ("no tags here", "no tags here", []),
    ],
)
def test_lora_tags_parsed_out_of_prompts(prompt, clean, adapters):
    from moslora_diffusion.webui.requests import parse_lora_tags

    assert parse_lora_tags(prompt) == (clean, adapters)


def test_lora_tags_count_with_slots_and_are_bounded():
    req = GenerationRequest(prompt="x <lora:a:3>", adapters=[])
    with pytest.raises(ValueError, match="strength of a.safetensors must be between"):
        validate_request(req, Limits())
    req = GenerationRequest(
        prompt="x <lora:a> <lora:b> <lora:c>", adapters=[("d.safetensors", 1), ("e.safetensors", 1)]
    )
    with pytest.raises(ValueError, match="at most 4 adapters"):
        validate_request(req, Limits())


def test_stop_interrupts_within_one_denoising_step(tmp_path):
    """Issue "Web UI for daily use": Stop ends a generation after its current step; finished images are kept."""
    from moslora_diffusion.errors import GenerationStopped
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 3:  # the user presses Stop during the third step
            engine.stop()

    with pytest.raises(GenerationStopped):
        engine.generate(GenerationRequest(prompt="a", steps=40, width=32, height=32, seed=1), progress)
    assert max(seen) == 3  # stopped right after the step in which Stop was pressed, not at step 40
    assert not list(Path(setup["outputs"]).rglob("*.png"))
    seen.clear()

    def stop_in_second_image(done, total):
        seen.append(done)
        if done == 45:  # image 1 of 2 is done after step 40
            engine.stop()

    req = GenerationRequest(prompt="a", steps=40, width=32, height=32, seed=1, num_images=2)
    results = engine.generate(req, stop_in_second_image)
    assert len(results) == 1 and results[0].path.is_file() and max(seen) == 45
    engine.stop()  # nothing running: no stale stop for the next request
    assert len(engine.generate(GenerationRequest(prompt="a", steps=2, width=32, height=32, seed=1))) == 1


def test_stop_in_a_comparison_keeps_the_finished_cells(tmp_path):
    """Issue 25, bug 9: Stop in Compare says how far it got and keeps the finished images in the grid."""
    import numpy as np

    from moslora_diffusion.webui.compare import compare
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    req = GenerationRequest(prompt="a red square", steps=4, width=32, height=32)
    full = compare(engine, req, "plain.safetensors", [1.0], [1, 2])
    assert full.stopped is None

    def stop_in_third(done, total):
        if done == 9:  # images 1 and 2 (4 steps each) are done
            engine.stop()

    part = compare(engine, req, "plain.safetensors", [1.0], [1, 2], stop_in_third)
    assert part.stopped == "stopped after 2 of 4 images" and part.path.is_file()
    assert part.grid.size == full.grid.size
    a, b = np.asarray(full.grid, dtype=np.int16), np.asarray(part.grid, dtype=np.int16)
    top = a.shape[0] // 2  # the first row (seed 1) was finished: the same pixels below the title
    assert np.abs(a[top - 20 : top, :] - b[top - 20 : top, :]).max() == 0
    assert np.abs(a[-20:, :] - b[-20:, :]).max() > 0  # the second row is grey


def test_generation_settings_from_our_infotext_and_a1111s():
    from moslora_diffusion.webui.pngmeta import format_adapters, generation_settings, parse_adapters

    ours = format_parameters(
        "a cat", "dog", {"Steps": 3, "Sampler": "Euler a", "CFG scale": "5", "Seed": 7, "Size": "32x48",
                         "Adapters": format_adapters([("p.safetensors", 0.8), ("o.safetensors", -1.0)])},
    )  # fmt: skip
    assert generation_settings(parse_parameters(ours)) == {
        "prompt": "a cat", "negative_prompt": "dog", "seed": 7, "steps": 3, "guidance_scale": 5.0,
        "sampler": "Euler a", "width": 32, "height": 48, "adapters": [("p.safetensors", 0.8), ("o.safetensors", -1.0)],
    }  # fmt: skip
    a1111 = (
        "portrait\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15"
    )
    settings = generation_settings(parse_parameters(a1111))
    assert settings["width"] == 512 and settings["height"] == 768 and "adapters" not in settings
    assert parse_adapters("a: 1, broken, b.safetensors: x, c: -0.5") == [("a", 1.0), ("c", -0.5)]


def test_size_sliders_bounded_around_the_native_size(tmp_path):
    """Issue "Web UI for daily use": sizes default to and are bounded around the model's own (32 px here)."""
    from moslora_diffusion.webui.engine import Engine
    from moslora_diffusion.webui.widgets import size_bounds
    from moslora_diffusion.webui.widgets import size_note as _size_note

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    assert engine.defaults["width"] == engine.defaults["height"] == 32
    assert size_bounds(engine) == (32, 32, 128)  # Limits.min_size caps the low end
    assert _size_note(engine, 32, 64) == ""  # 2x: fine
    assert "height 72" in _size_note(engine, 32, 72) and "native 32 px" in _size_note(engine, 32, 72)


def test_history_newest_first_in_pages(tmp_path):
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    assert engine.history() == ([], 1)
    made = [
        r.path
        for r in engine.generate(
            GenerationRequest(prompt="a", steps=1, width=32, height=32, seed=1, num_images=3)
        )
    ]
    import os

    for i, path in enumerate(made):  # distinct times, oldest first
        os.utime(path, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    (engine.output_dir / "notes.txt").write_text("not an image")
    page1, pages = engine.history(1, per_page=2)
    assert pages == 2 and page1 == [made[2], made[1]]
    assert engine.history(2, per_page=2)[0] == [made[0]]
    with pytest.raises(ValueError, match="start at 1"):
        engine.history(0)


def test_cancelled_job_can_keep_the_adapter_trained_so_far(tmp_path, lora_file):
    gate = threading.Event()
    jobs = TrainingJobs(
        "base",
        tmp_path / "adapters",
        tmp_path / "work",
        backend=FakeTraining(lora_file, step_delay=0.05, gate=gate),
    )
    req = TrainRequest(images=_images(tmp_path / "in", 3), instance_prompt="sks", adapter_name="partial",
                       steps=1000, keep_on_cancel=True)  # fmt: skip
    jobs.start(req)
    gate.set()
    for _ in range(200):
        if jobs.status().step >= 3:
            break
        threading.Event().wait(0.02)
    jobs.cancel()
    st = jobs.wait(20)
    assert st.state == "cancelled" and "the adapter trained so far is partial.safetensors" in st.message
    assert (tmp_path / "adapters" / "partial.safetensors").read_bytes() == lora_file.read_bytes()


def test_loss_frame_raw_and_smoothed():
    from moslora_diffusion.webui.tab_train import SMOOTHED, loss_frame

    losses = [(i, float(i % 2)) for i in range(1, 41)]  # 0/1 alternating: the mean of 2 is 0.5
    frame = loss_frame(losses)
    raw = frame[frame["curve"] == "raw"]
    smooth = frame[frame["curve"].str.startswith("smoothed")]
    assert list(raw["loss"]) == [v for _, v in losses] and list(raw["step"]) == list(range(1, 41))
    assert set(smooth["curve"]) == {SMOOTHED} and all(smooth["loss"].iloc[1:] == 0.5)  # window 40 // 20 = 2
    # the label never changes as the run grows (the plot keeps its first colour domain)
    assert set(loss_frame(losses[:3])["curve"]) == set(frame["curve"])


def test_plot_frames_keep_text_series_columns_when_empty():
    """An empty frame with a numeric series column made the loss plot colour by a gradient for good (seen on a
    real run, where the first polls come before the first step): the column must stay text."""
    from pandas.api.types import is_numeric_dtype

    from moslora_diffusion.webui.tab_train import loss_frame, quality_frame

    assert not is_numeric_dtype(loss_frame([])["curve"])
    assert not is_numeric_dtype(quality_frame([])["score"])


def test_img2img_runs_the_strength_share_of_the_steps(tmp_path):
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    start = Image.new("RGB", (32, 32), (200, 30, 30))
    for strength, steps_run in ((0.2, 2), (1.0, 10)):
        seen = []
        req = GenerationRequest(
            prompt="a", steps=10, width=32, height=32, seed=3, init_image=start, strength=strength
        )
        engine.generate(req, lambda done, total, seen=seen: seen.append((done, total)))
        assert seen[-1] == (steps_run, steps_run)
    with pytest.raises(
        ValueError, match="the start image 'not an image' is not there"
    ):  # a path: opened, named
        engine.generate(
            GenerationRequest(prompt="a", steps=2, width=32, height=32, init_image="not an image")
        )
    with pytest.raises(ValueError, match="img2img input must be an image"):
        engine.generate(GenerationRequest(prompt="a", steps=2, width=32, height=32, init_image=42))


def test_switching_the_base_model_rechecks_adapters(tmp_path):
    """Issue "Web UI for daily use": switching unloads the old model; adapters are checked against the new one."""
    from moslora_diffusion.errors import AdapterMismatchError
    from moslora_diffusion.tiny import save_tiny_pipeline
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    xl = save_tiny_pipeline("sdxl", tmp_path / "models" / "tiny-xl")
    engine = Engine.from_pretrained(
        setup["base"], setup["adapters"], setup["outputs"], models={"tiny-xl": str(xl)}
    )
    assert set(engine.models) == {"tiny-xl", "base"} and engine.model_name == "base"
    req = GenerationRequest(
        prompt="a", steps=1, width=32, height=32, seed=1, adapters=[("plain.safetensors", 1.0)]
    )
    engine.generate(req)
    assert engine.pipe.get_list_adapters()
    with pytest.raises(ValueError, match="unknown base model"):
        engine.switch_model("/etc")  # names from the list only, never a path
    engine.switch_model("tiny-xl")
    assert (
        engine.architecture == "sdxl"
        and engine.model_name == "tiny-xl"
        and engine.pipe.get_list_adapters() == {}
    )
    with pytest.raises(AdapterMismatchError):
        engine.adapter_info("plain.safetensors")  # an SD1 adapter does not fit the SDXL model
    assert engine.adapter_info("xl_only.safetensors")["kind"] == "diffusers"
    assert engine.generate(
        GenerationRequest(
            prompt="a", steps=1, width=32, height=32, seed=1, adapters=[("xl_only.safetensors", 1.0)]
        )
    )
    engine.switch_model("base")
    assert engine.architecture == "sd1"


def test_training_job_on_a_single_file_base_uses_its_config_folder_and_buckets(tmp_path, lora_file):
    from moslora_diffusion.tiny import make_tiny_pipeline
    from tests.ldm_layout import pipeline_to_single_file

    folder = tmp_path / "sd1"

    pipe = make_tiny_pipeline("sd1")
    pipe.save_pretrained(folder)
    single = pipeline_to_single_file(pipe, tmp_path / "model.safetensors")
    backend = FakeTraining(lora_file)
    jobs = TrainingJobs(str(single), tmp_path / "adapters", tmp_path / "work", backend=backend,
                        configs={"sd1": str(folder)}, sampler_defaults={"width": 32})  # fmt: skip
    req = TrainRequest(images=_images(tmp_path / "in", 3), instance_prompt="a photo of sks toy",
                       adapter_name="single", steps=2)  # fmt: skip
    jobs.start(req)
    assert jobs.wait(20).state == "done"
    cfg = backend.configs[0]
    assert cfg.pretrained_model_name_or_path == str(single) and cfg.config == str(folder)
    assert cfg.bucket and cfg.bucket_step == 8  # photos keep their aspect ratio; steps fit a 32 px model


def test_training_job_on_the_example_subject_reports_a_quality_curve(tmp_path, lora_file):
    from moslora_diffusion import toyworld
    from moslora_diffusion.webui.tab_train import quality_frame

    backend = FakeTraining(lora_file)
    jobs = TrainingJobs(str(toyworld.base_model_path()), tmp_path / "adapters", tmp_path / "work",
                        backend=backend, sampler_defaults={"width": 32})  # fmt: skip
    req = TrainRequest(images=[], instance_prompt="a sks circle", adapter_name="example", steps=8,
                       example_subject=True)  # fmt: skip
    jobs.start(req)
    st = jobs.wait(20)
    assert st.state == "done", st.message
    cfg = backend.configs[0]
    assert Path(cfg.instance_data_dir) == toyworld.subject_path()  # its images and captions, no upload
    assert cfg.unet_targets == toyworld.subject_training_defaults()["unet_targets"]
    assert backend.scorers[0] is not None  # the toy world's scorer goes with the run
    assert [s for s, _ in st.scores] == [2, 4, 6, 8] and st.scores[-1][1]["subject fidelity"] == 1.0
    frame = quality_frame(st.scores)
    assert list(frame["percent"]) == [25.0, 50.0, 75.0, 100.0]
    # uploads on the toy model: no example-subject scorer; the example subject on another model: refused
    jobs.start(
        TrainRequest(images=_images(tmp_path / "in", 3), instance_prompt="a sks toy", adapter_name="up")
    )
    assert jobs.wait(20).state == "done" and backend.scorers[1] is None
    other = TrainingJobs("base", tmp_path / "adapters", tmp_path / "work", backend=backend)
    with pytest.raises(ValueError, match="toy-world base model only"):
        other.start(TrainRequest(images=[], instance_prompt="x", adapter_name="e2", example_subject=True))
    # the second bundled subject by its key: its folder and recipe; an unknown key is refused by name
    jobs.start(TrainRequest(images=[], instance_prompt="a sks shape", adapter_name="star", steps=4,
                            example_subject="star"))  # fmt: skip
    assert jobs.wait(20).state == "done"
    assert Path(backend.configs[-1].instance_data_dir) == toyworld.get_subject("star").path
    assert backend.scorers[-1] is not None
    with pytest.raises(ValueError, match="'moon'"):
        jobs.start(TrainRequest(images=[], instance_prompt="x", adapter_name="e3", example_subject="moon"))


def test_token_counters_follow_a_model_switch(tmp_path):
    """Issue 25, bug 6: after the base-model menu loads another model, the counters show its limit at once."""
    import json
    from types import SimpleNamespace

    from moslora_diffusion.tiny import save_tiny_pipeline
    from moslora_diffusion.webui.engine import Engine
    from moslora_diffusion.webui.ui import _switch_model

    setup = make_tiny_setup(tmp_path)
    short = save_tiny_pipeline("sd1", tmp_path / "short")
    config = short / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 20}))
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"],
                                    models={"base": str(setup["base"]), "short": str(short)})  # fmt: skip
    tab = SimpleNamespace(width=1, height=2, steps=3, cfg=4, scheduler=5, counters=(6, 7), infos=[], slots=[])
    switch, outputs = _switch_model(engine, None, tab, "t")
    assert outputs == [1, 2, 3, 4, 5, 6, 7]
    before = engine.prompt_tokens("a red square")
    result = switch("short", "a red square", "", progress=lambda *a, **k: None)
    used, limit = engine.prompt_tokens("a red square")
    assert limit == 18 != before[1] and result[6] == f"{used} / 18 tokens" and result[7] == "0 / 18 tokens"


def test_the_train_tab_hides_the_previous_jobs_curves(tmp_path):
    """Issue 25, bug 5: a run without scores (uploads) does not keep showing the example's quality curve."""
    from types import SimpleNamespace

    from moslora_diffusion.webui.jobs import JobStatus
    from moslora_diffusion.webui.tab_train import training_poll

    status = JobStatus(state="running", step=3, max_steps=10, losses=[(1, 0.5)],
                       scores=[(2, {"subject fidelity": 0.5})], signals=[(0, {"subject_fit": 1.0}), (2, {"subject_fit": 0.5})])  # fmt: skip
    jobs = SimpleNamespace(status=lambda: status)
    train = SimpleNamespace(outputs=[0] * 6)
    tick = training_poll(None, jobs, train)
    quality, signals = tick(0)[-2:]
    assert quality["visible"] is True and signals["visible"] is True
    status.scores, status.signals = (
        [],
        [(0, {"subject_fit": 1.0})],
    )  # the next job: uploads, no validation yet
    quality, signals = tick(0)[-2:]
    assert quality == {"__type__": "update", "visible": False} and signals["visible"] is False


# ---- X/Y plot -------------------------------------------------------------------------------------------


def test_xy_plot_cells_equal_single_generations(tmp_path):
    """Issue 25: an X/Y plot over any two axes; each cell is the image the same settings give on their own
    (steps x sampler, CFG x prompt S/R with an adapter at a fixed strength), and the PNG records both axes."""
    from moslora_diffusion.webui.compare import parse_axis, xy_plot
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    req = GenerationRequest(prompt="a red square", negative_prompt="red noise", steps=3, width=32, height=32,
                            seed=5, scheduler="DDIM")  # fmt: skip

    def alone(**changes):
        from dataclasses import replace

        return np.asarray(engine.generate(replace(req, **changes))[0].image, dtype=np.int16)

    x, y = parse_axis("Steps", "2, 3"), parse_axis("Sampler", "Euler, UniPC")
    result = xy_plot(engine, req, x, y)
    assert len(result.images) == 4 and result.stopped is None
    for i, (sampler, steps) in enumerate((s, n) for s in y.values for n in x.values):
        assert np.array_equal(
            np.asarray(result.images[i], dtype=np.int16), alone(steps=steps, scheduler=sampler)
        )
    fields = parse_parameters(read_parameters(result.path))
    assert fields["X"] == "Steps: 2 3" and fields["Y"] == "Sampler: Euler, UniPC" and fields["Seed"] == "5"
    assert result.grid.size[0] > 2 * 32 and result.grid.size[1] > 2 * 32

    x, y = parse_axis("CFG scale", "1, 7.5"), parse_axis("Prompt S/R", "red, blue")
    result = xy_plot(engine, req, x, y, adapter="plain.safetensors", strength=0.5)
    adapters = [("plain.safetensors", 0.5)]
    cells = [(c, p) for p in ("red", "blue") for c in (1.0, 7.5)]
    for image, (cfg, word) in zip(result.images, cells):
        expect = alone(guidance_scale=cfg, prompt=f"a {word} square", negative_prompt=f"{word} noise",
                       adapters=adapters)  # fmt: skip
        assert np.array_equal(np.asarray(image, dtype=np.int16), expect)
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[2]))  # the words matter


@pytest.mark.parametrize(
    ("x", "y", "adapter", "message"),
    [
        (("Seed", "1, 2"), ("Seed", "3"), None, "both Seed"),
        (("Strength", "0, 1"), ("Seed", "1"), None, "needs an adapter"),
        (("Prompt S/R", "green, blue"), None, None, "neither prompt contains it"),
        (("Sampler", "DDIM, PNDM"), None, None, "unknown sampler 'PNDM'"),
        (("Steps", "2, 500"), None, None, "steps must be between 1 and 150, got 500"),
        (("Steps", "2.5"), None, None, "steps 2.5 must be a whole number"),
        (
            ("Seed", " ".join(str(i) for i in range(9))),
            ("CFG scale", " ".join(str(i) for i in range(8))),
            None,
            "72 images; the limit is 64",
        ),
        (("Strength", "1"), None, "xl_only.safetensors", "xl_only.safetensors"),
        (("Width", "32"), None, None, "unknown axis 'Width'"),
    ],
)
def test_xy_plot_refuses_before_rendering(tmp_path, x, y, adapter, message):
    """Every cell is checked before the first is rendered: a bad axis is named and nothing is written."""
    from moslora_diffusion.errors import MoSLoraError
    from moslora_diffusion.webui.compare import parse_axis, xy_plot
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    req = GenerationRequest(prompt="a red square", steps=2, width=32, height=32, seed=1)
    rendered = []
    with pytest.raises(MoSLoraError, match=message):
        xy_plot(engine, req, parse_axis(*x), parse_axis(*y) if y else None, adapter,
                progress=lambda done, total: rendered.append(done))  # fmt: skip
    assert not rendered and not setup["outputs"].exists()


# ---- images as they finish, live preview ---------------------------------------------------------------


def test_generate_reports_each_image_and_a_preview_per_step(tmp_path):
    """Issue 25: each image is handed over as soon as it is saved (before the next starts) and every denoising
    step gives a preview of the request's size; the images equal those of a run without the callbacks."""
    from moslora_diffusion.webui.engine import Engine

    setup = make_tiny_setup(tmp_path)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    req = GenerationRequest(prompt="a red square", steps=3, width=40, height=32, seed=4, num_images=2)
    events = []
    results = engine.generate(
        req,
        on_image=lambda r: events.append(("image", r.seed, r.path.is_file())),
        on_preview=lambda i, image: events.append(("preview", i, image.size)),
    )
    assert events == [("preview", 0, (40, 32))] * 3 + [("image", 4, True)] + [
        ("preview", 1, (40, 32))
    ] * 3 + [("image", 5, True)]
    plain = engine.generate(req)
    for a, b in zip(results, plain):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_latent_preview_matches_the_decoded_image_on_the_toy_model():
    """The fitted colour map turns the last step's latents into the decoded image's colours (block means)
    clearly better than the best constant colour does (a linear map cannot be exact: the VAE is not linear)."""
    import torch
    import torch.nn.functional as F

    from moslora_diffusion import toyworld
    from moslora_diffusion.webui.engine import load_serving_pipeline
    from moslora_diffusion.webui.preview import LatentPreview

    pipe = load_serving_pipeline(str(toyworld.base_model_path()))
    latents = []

    def keep(pipe, step, timestep, kwargs):
        latents.append(kwargs["latents"].clone())
        return kwargs

    out = pipe("a red circle on a blue background", num_inference_steps=20, width=32, height=32,
               generator=torch.Generator().manual_seed(1), callback_on_step_end=keep).images[0]  # fmt: skip
    preview = np.asarray(LatentPreview(pipe.vae, pipe.vae_scale_factor)(latents[-1]), dtype=np.float32) / 255
    decoded = torch.tensor(np.asarray(out, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    blocks = F.adaptive_avg_pool2d(decoded, preview.shape[:2])[0].permute(1, 2, 0).numpy()
    error = np.abs(preview - blocks).mean()
    constant = np.abs(blocks - blocks.reshape(-1, 3).mean(0)).mean()
    assert error < 0.1 and error < 0.7 * constant, (error, constant)


# ---- the Adapters tab: cards, tags, uploads, sample images --------------------------------------------


def test_adding_an_adapter_file_checks_it_before_writing(tmp_path):
    """Issue 25: an uploaded adapter is checked like any other before it is listed: a plain file name, not
    taken, within the size limit, and an adapter file the toolkit reads; nothing is written otherwise."""
    from moslora_diffusion.errors import MoSLoraFormatError, RequestError
    from moslora_diffusion.webui.adapter_files import add_adapter_file

    setup = make_tiny_setup(tmp_path / "s")
    folder = setup["adapters"]
    before = sorted(p.name for p in folder.iterdir())
    upload = tmp_path / "up" / "new.safetensors"
    upload.parent.mkdir()
    upload.write_bytes((folder / "plain.safetensors").read_bytes())
    info = add_adapter_file(folder, upload, "new.safetensors", max_bytes=2**30)
    assert info["kind"] == "diffusers" and (folder / "new.safetensors").read_bytes() == upload.read_bytes()
    assert list_adapters(folder) == ["new.safetensors", "other.safetensors", "plain.safetensors",
                                     "xl_only.safetensors"]  # fmt: skip
    garbage = tmp_path / "up" / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
    cases = [
        (upload, "new.safetensors", 2**30, AdapterNameError, "already in the adapters folder"),
        (upload, "../up.safetensors", 2**30, AdapterNameError, "without path parts"),
        (upload, "new.bin", 2**30, AdapterNameError, "only .safetensors"),
        (upload, "big.safetensors", 1000, RequestError, "more than the upload limit"),
        (garbage, "garbage.safetensors", 2**30, MoSLoraFormatError, ""),
    ]
    for source, name, limit, error, message in cases:
        with pytest.raises(error, match=message or None):
            add_adapter_file(folder, source, name, max_bytes=limit)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "new.safetensors"])


def test_sample_image_card_caption_and_tag(tmp_path):
    """Issue 25: "Make sample image" draws the adapter at strength 1 with its training prompt (the same image
    Generate gives) as ``name.preview.png``; cards show it, and a click's tag is added once."""
    from moslora_diffusion.errors import RequestError
    from moslora_diffusion.webui.engine import Engine
    from moslora_diffusion.webui.tab_adapters import adapter_cards, card_caption, insert_tag
    from tests.webui_support import write_native_moslora

    setup = make_tiny_setup(tmp_path)
    write_native_moslora(setup["base"], setup["adapters"] / "native.safetensors", seed=3)
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    with pytest.raises(RequestError, match="records no training prompt"):
        engine.make_sample("plain.safetensors")
    path = engine.make_sample("native.safetensors")
    assert path == setup["adapters"] / "native.preview.png"
    d = engine.defaults
    same = engine.generate(GenerationRequest(prompt="a photo of sks blob", steps=d["steps"], seed=0,
                                             guidance_scale=d["guidance_scale"], width=d["width"], height=d["height"],
                                             scheduler=d["scheduler"], adapters=[("native.safetensors", 1.0)]))  # fmt: skip
    with Image.open(path) as sample:
        assert np.array_equal(np.asarray(sample.convert("RGB")), np.asarray(same[0].image.convert("RGB")))
        assert 'Adapters: "native.safetensors: 1"' in sample.info["parameters"]
    items, names = adapter_cards(engine)
    assert names == engine.list_adapters()
    by_name = dict(zip(names, items))
    assert by_name["native.safetensors"][0] == str(path)
    assert by_name["native.safetensors"][1] == "native · sd1 · rank 2/4 · “a photo of sks blob”"
    assert isinstance(by_name["plain.safetensors"][0], Image.Image)  # a text card: no sample image yet
    assert by_name["xl_only.safetensors"][1].endswith("does not fit this model")
    entry = {"name": "x.safetensors", "architecture": None, "rank": 8, "fits": True}
    assert card_caption(entry) == "x · unknown architecture · rank 8"
    assert insert_tag("a cat", "native.safetensors") == "a cat <lora:native:1>"
    assert insert_tag("a cat <lora:native:1>", "native.safetensors") == "a cat <lora:native:1>"
    assert insert_tag("", "native.safetensors") == "<lora:native:1>"
