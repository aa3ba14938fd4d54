"""The third round of fault and bad-input testing (issue "Same seed, same adapter"): each fault fed on purpose.

Every test here failed on the code before its fix; docs/reliability.md has a row for each.
"""

from __future__ import annotations

import time

import pytest

from moslora_diffusion.errors import RequestError
from moslora_diffusion.webui.pngmeta import MAX_PARAMETERS_CHARS, format_parameters, parse_parameters


def test_infotext_parsing_is_linear_and_bounded():
    line = "a" * (MAX_PARAMETERS_CHARS - 10)
    started = time.perf_counter()
    assert parse_parameters("p\n" + line)["Prompt"] == "p\n" + line
    parse_parameters("p\n" + "key: 1," * (MAX_PARAMETERS_CHARS // 8))
    assert time.perf_counter() - started < 0.5  # the regex took 39 s for 30k characters
    with pytest.raises(RequestError, match="more than the 65,536"):
        parse_parameters("p\n" + "a" * (MAX_PARAMETERS_CHARS + 1))
    fields = {"Steps": 25, "Sampler": "DPM++ 2M", "Seed": 4, "Note": 'q"u,o:te\\', "Model": "m"}
    text = format_parameters("a, b\nc", "neg: x", fields)
    assert parse_parameters(text) == {"Prompt": "a, b\nc", "Negative prompt": "neg: x",
                                      **{k: str(v) for k, v in fields.items()}}  # fmt: skip
    assert parse_parameters('p\nSteps: 2, Seed: 3, Bad: "a\\qb"')["Bad"] == "a\\qb"


def test_an_extreme_aspect_ratio_is_cropped_before_it_is_resized():
    """Fault 2: a 102-byte 1x4000 PNG at --resolution 512 peaked at 5 GB (resize to 512x2,048,000 first)."""
    import subprocess
    import sys

    code = (
        "import resource, time\nfrom PIL import Image\nfrom moslora_diffusion.training import data\n"
        "t = time.perf_counter()\n"
        "for pos in range(3):\n"
        "    ex = data.preprocess(Image.new('RGB', (1, 4000), (9, 99, 199)), 'c', 512, False, False,\n"
        "                         data.augmentation_generator(0, pos))\n"
        "assert tuple(ex.pixels.shape) == (3, 512, 512)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds, peak_gib = map(float, proc.stdout.split())
    assert seconds < 5 and peak_gib < 1.5, (seconds, peak_gib)


def test_cropping_first_draws_what_resizing_first_drew():
    import numpy as np
    from PIL import Image

    from moslora_diffusion.training import data

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    for resolution, center in ((64, True), (256, True), (96, False)):
        gen = data.augmentation_generator(1, 2)
        ex = data.preprocess(image, "c", resolution, center, False, gen)
        new_w, new_h = data._covering_size(image.size, (resolution, resolution))
        top, left = ex.crop_top_left
        whole = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        ref = np.asarray(whole.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
        got = (ex.pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5
        assert np.abs(got - ref).max() <= 1.01 and np.abs(got - ref).mean() < 0.01


def _toy_args(out, *extra):
    from moslora_diffusion import toyworld

    return ["--pretrained_model_name_or_path", str(toyworld.base_model_path()),
            "--instance_data_dir", str(toyworld.subject_path()), "--instance_prompt", "a sks circle",
            "--resolution", "32", "--checkpointing_steps", "0", "--output_dir", str(out), *extra]  # fmt: skip


_HOLD = """
import sys, time
from moslora_diffusion.training import parse_args, run_folder
cfg = parse_args(sys.argv[1:])
with run_folder.hold_output_dir(cfg):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_a_held_output_dir_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    """Fault 3: two runs on one --output_dir both exited 0 and mixed their files."""
    import subprocess
    import sys

    from moslora_diffusion.errors import TrainConfigError
    from moslora_diffusion.training import parse_args, run_training

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, *_toy_args(out, "--seed", "1")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--seed", "2"], ["--seed", "1", "--resume_from_checkpoint", "latest"]):
            with pytest.raises(TrainConfigError, match=rf"in use by another run \(pid {holder.pid} on "):
                run_training(parse_args(_toy_args(out, "--max_train_steps", "1", *extra)))
        assert not (out / "run.json").exists() and not list(out.glob("*.safetensors"))
    finally:
        holder.kill()
        holder.wait()
    result = run_training(parse_args(_toy_args(out, "--max_train_steps", "1", "--seed", "2")))
    assert result.steps_done == 1 and (out / "moslora_weights.safetensors").is_file()


def test_a_run_that_ended_while_another_waited_is_not_overwritten(tmp_path):
    """Fault 3: the output folder is checked again once the lock is held (a run may have ended since)."""
    from moslora_diffusion.errors import TrainConfigError
    from moslora_diffusion.training import parse_args, run_folder, run_training

    out = tmp_path / "run"
    late = parse_args(_toy_args(out, "--max_train_steps", "1", "--seed", "5"))
    run_folder.check_output_dir(late)  # the late run's preflight passes on the empty folder ...
    run_training(parse_args(_toy_args(out, "--max_train_steps", "1", "--seed", "4")))  # ... another run ends
    with pytest.raises(TrainConfigError, match="holds another run's work"):
        with run_folder.hold_output_dir(late):
            pass


def test_eval_toyworld_keeps_a_previous_study_and_caps_its_workers(tmp_path, capsys):
    """Faults 4 and 7: a second study overwrote the first without a word; --workers 1000 started 7 processes."""
    import os

    from moslora_diffusion.cli import main

    out = tmp_path / "study"
    out.mkdir()
    (out / "results.json").write_text('{"runs": []}')
    assert main(["eval-toyworld", "--smoke", "--output_dir", str(out)]) != 0
    assert "holds a previous study (results.json of " in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"runs": []}'
    cores = os.cpu_count() or 1
    for workers in (cores + 1, 1000, 0):
        assert (
            main(["eval-toyworld", "--smoke", "--workers", str(workers), "--output_dir", str(tmp_path / "w")])
            != 0
        )
        assert f"--workers {workers}: choose 1 to {cores}" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_16_bit_grey_png_loads_as_its_grey(tmp_path):
    """Fault 5: a mid-grey 16-bit PNG loaded as white and trained."""
    import numpy as np
    from PIL import Image

    from moslora_diffusion.training import data

    for value, expected in ((32896, 128), (0, 0), (65535, 255), (1000, 4)):
        path = tmp_path / f"grey{value}.png"
        Image.fromarray(np.full((4, 6), value, dtype=np.uint16)).save(path)
        with Image.open(path) as im:
            assert im.mode.startswith("I")  # what Pillow makes of it
        rgb = np.asarray(data.load_image(path))
        assert rgb.shape == (4, 6, 3) and (rgb == expected).all(), (value, rgb[0, 0])


def test_metadata_rows_for_missing_files_are_refused(tmp_path):
    """Fault 5: metadata.jsonl rows naming files that are not there were ignored."""
    import json

    from PIL import Image

    from moslora_diffusion.errors import TrainConfigError
    from moslora_diffusion.training import data

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rows = [{"file_name": "a.png", "text": "a sks dog"}, {"file_name": "b.png", "text": "a sks dog, left"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(
        TrainConfigError, match=r"metadata.jsonl: rows name files that are not images .*: b\.png"
    ):
        data.check_instance_data(str(tmp_path), None)
    (tmp_path / "metadata.jsonl").write_text(json.dumps(rows[0]))
    assert data.check_instance_data(str(tmp_path), None).captions == ["a sks dog"]


def test_empty_class_images_are_replaced_and_named(tmp_path, caplog):
    """Fault 5: zero-byte class images made prior preservation use fewer class images, without a word."""
    from PIL import Image

    from moslora_diffusion.training import parse_args, prior

    classes = tmp_path / "classes"
    classes.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(classes / f"c{i}.png")
    (classes / "c3.png").write_bytes(b"")
    (classes / "c4.png").write_bytes(b"")
    cfg = parse_args(_toy_args(tmp_path / "out", "--with_prior_preservation", "--class_data_dir", str(classes),
                               "--class_prompt", "a circle", "--num_class_images", "5"))  # fmt: skip
    with caplog.at_level("WARNING"):
        assert prior.missing_class_images(cfg) == 2
    assert "2 unreadable class image(s)" in caplog.text and "c3.png" in caplog.text


def test_a_text_encoder_module_stored_under_both_spellings_is_refused_everywhere(tiny_dirs, tmp_path):
    """Fault 5: `export --format diffusers` and `load_moslora_weights` silently kept one of the two."""
    from safetensors.torch import load_file, save_file

    from moslora_diffusion.errors import MoSLoraFormatError
    from moslora_diffusion.formats import export_adapter, load_moslora_file
    from moslora_diffusion.formats.safetensors_io import read_header
    from tests.pipeline_support import load_tiny, random_adapter

    pipe = load_tiny(tiny_dirs, "sd1")
    good = random_adapter(pipe, components=("text_encoder",)).save(tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    metadata, _ = read_header(good)  # kept as written
    first = sorted(k for k in tensors if k.startswith("text_encoder.") and "text_model." not in k)[0]
    module = first.rsplit(".", 2)[0]
    for part in ("lora_A", "lora_mixer", "lora_B"):
        twin = module.replace("text_encoder.", "text_encoder.text_model.", 1) + f".{part}.weight"
        tensors[twin] = tensors[f"{module}.{part}.weight"] * 2
    bad = tmp_path / "twice.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    message = "is stored twice"
    with pytest.raises(MoSLoraFormatError, match=message):
        load_moslora_file(bad)
    for fmt in ("diffusers", "kohya"):
        with pytest.raises(MoSLoraFormatError, match=message):
            export_adapter(bad, tmp_path / f"out-{fmt}.safetensors", fmt)
        assert not (tmp_path / f"out-{fmt}.safetensors").exists()
    import moslora_diffusion  # noqa: F401  (adds load_moslora_weights)

    with pytest.raises(MoSLoraFormatError, match=message):
        pipe.load_moslora_weights(str(bad), adapter_name="twice")
    assert not pipe.get_list_adapters()


def test_web_ui_sees_a_replaced_adapter_and_bounds_repeated_strengths(tiny_dirs, tmp_path):
    """Fault 5: an adapter replaced by one of the same size and mtime kept being served from the cache;
    `<lora:good:2>` four times added up to strength 8, past the documented -2...2."""
    import os

    import numpy as np

    from moslora_diffusion.webui.engine import Engine, GenerationRequest
    from tests.pipeline_support import load_tiny
    from tests.webui_support import write_plain_lora

    adapters = tmp_path / "adapters"
    path = adapters / "good.safetensors"
    write_plain_lora("sd1", path, seed=0)
    engine = Engine(load_tiny(tiny_dirs, "sd1"), tiny_dirs["sd1"], adapters, tmp_path / "outputs")

    def render() -> np.ndarray:
        req = GenerationRequest(prompt="a <lora:good:1>", steps=2, width=32, height=32, seed=3)
        return np.asarray(engine.generate(req)[0].image, dtype=np.int16)

    first = render()
    stat = path.stat()
    write_plain_lora("sd1", tmp_path / "new.safetensors", seed=5)
    assert (tmp_path / "new.safetensors").stat().st_size == stat.st_size
    os.replace(tmp_path / "new.safetensors", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = render()
    assert np.abs(first - second).max() > 0  # the new weights, not the cached old ones
    write_plain_lora("sd1", adapters / "fresh.safetensors", seed=5)
    fresh = GenerationRequest(prompt="a <lora:fresh:1>", steps=2, width=32, height=32, seed=3)
    assert np.array_equal(second, np.asarray(engine.generate(fresh)[0].image, dtype=np.int16))
    with pytest.raises(
        RequestError, match=r"strengths of good.safetensors \(given 4 times\) add up .* got 8"
    ):
        engine.generate(GenerationRequest(prompt="a" + " <lora:good:2>" * 4, steps=1, width=32, height=32))
    engine.generate(GenerationRequest(prompt="a <lora:good:1> <lora:good:1>", steps=1, width=32, height=32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["runs"].append(dict(s["runs"][0])), r"'A' at seed 0 appears twice"),
        (
            lambda s: s["runs"][1].update(subject_fidelity=5.0),
            r"'subject_fidelity' is not a number from 0 to 1",
        ),
        (lambda s: s["runs"][1].update(seed=1.5), r"'seed' 1.5 is not a whole number"),
        (
            lambda s: s["runs"][1].update(seed=10**30),
            r"'seed' 1000000000000000000000000000000 is not a whole",
        ),
        (lambda s: s["runs"][1].update(method=["A"]), r"'method' is not a name"),
        (lambda s: s.update(methods=[{"x": 1}]), r"'methods' must hold names"),
        (lambda s: s.update(config="rank 8"), r"'config' must be an object"),
    ],
)
def test_compare_toyworld_refuses_impossible_studies(tmp_path, change, message):
    """Faults 5 and 6: duplicated seeds and a metric of 5.0 gave "200.0 ± 3176.5"; odd types, tracebacks."""
    import json

    from moslora_diffusion.errors import StudyError
    from moslora_diffusion.toyworld import scoring
    from moslora_diffusion.yardstick import pairing

    runs = [{"method": "A", "seed": s, **{m: 0.5 for m in scoring.METRICS}} for s in range(2)]
    study = {"runs": runs, "methods": ["A"], "config": {}}
    change(study)
    (tmp_path / "results.json").write_text(json.dumps(study))
    with pytest.raises(StudyError, match=message):
        pairing.load_study(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("[" * 50_000 + "]" * 50_000, "nested deeper than 64"), ('{"runs": NaN}', "NaN is not a JSON number")],
)
def test_compare_toyworld_reads_hostile_json_with_a_message(tmp_path, text, message):
    from moslora_diffusion.errors import StudyError
    from moslora_diffusion.yardstick import pairing

    (tmp_path / "results.json").write_text(text)
    with pytest.raises(StudyError, match=message):
        pairing.load_study(tmp_path)
    (tmp_path / "results.json").write_bytes(b'{"runs": "\xff"}')
    with pytest.raises(StudyError, match="not UTF-8"):
        pairing.load_study(tmp_path)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("s0.txt", "a sks circle".encode("utf-16"), r"s0.txt: not UTF-8 text \(it looks like UTF-16\)"),
        (
            "metadata.jsonl",
            '{"file_name": "s0.png", "text": "a sks café"}'.encode("latin-1"),
            "metadata.jsonl: not UTF-8",
        ),
    ],
)
def test_captions_in_another_encoding_are_named(tmp_path, name, raw, message):
    """Fault 6: a UTF-16 caption or a Latin-1 metadata.jsonl ended in a UnicodeDecodeError traceback."""
    from PIL import Image

    from moslora_diffusion.errors import TrainConfigError
    from moslora_diffusion.training import data

    Image.new("RGB", (8, 8)).save(tmp_path / "s0.png")
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(TrainConfigError, match=message):
        data.check_instance_data(str(tmp_path), "a sks circle")
    (tmp_path / name).write_bytes(
        b"\xef\xbb\xbf" + raw.decode("utf-16" if name.endswith(".txt") else "latin-1").encode()
    )
    assert "sks" in data.check_instance_data(str(tmp_path), "x").captions[0]  # UTF-8 with a BOM is fine


def test_an_instance_folder_with_a_non_utf8_name_trains_and_writes_its_card(tmp_path):
    """Fault 6: the run trained fully, then the model card crashed (exit 1, no README)."""
    import os
    import shutil

    from moslora_diffusion import toyworld
    from moslora_diffusion.formats import load_moslora_file
    from moslora_diffusion.training import parse_args, run_training

    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/subject-\xff")
    shutil.copytree(toyworld.subject_path(), folder)
    out = tmp_path / "out"
    args = _toy_args(out, "--max_train_steps", "1")
    args[args.index("--instance_data_dir") + 1] = folder
    run_training(parse_args(args))
    assert (out / "README.md").read_text(encoding="utf-8").startswith("---")
    assert (
        load_moslora_file(out / "moslora_weights.safetensors")
        .training["instance_data_dir"]
        .endswith("subject-\\xff")
    )
