"""The scripting API: gradio_client against a live server on a free loopback port with a tiny base model."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

from moslora_diffusion.webui.pngmeta import parse_parameters, read_parameters
from tests.webui_support import free_port, make_tiny_setup, write_native_moslora

gradio_client = pytest.importorskip("gradio_client")

COMMON = {"prompt": "a red circle", "steps": 2, "width": 32, "height": 32, "scheduler": "DDIM"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from moslora_diffusion.webui.server import build_parser, create_app, launch

    setup = make_tiny_setup(tmp_path_factory.mktemp("webui"))
    native, reference = write_native_moslora(setup["base"], setup["adapters"] / "native.safetensors", seed=3)
    write_native_moslora(
        setup["base"], setup["adapters"] / "native_xl_tag.safetensors", seed=4, architecture="sdxl"
    )
    from moslora_diffusion.formats import export_adapter

    export_adapter(native, setup["adapters"] / "native_kohya.safetensors", "kohya")
    port = free_port()
    argv = ["--base_model", str(setup["base"]), "--adapters_dir", str(setup["adapters"])]
    argv += ["--output_dir", str(setup["outputs"]), "--port", str(port), "--no_train"]
    args = build_parser().parse_args(argv)
    demo, engine, _ = create_app(args)
    launch(demo, args, engine, prevent_thread_lock=True)
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield {"client": client, "engine": engine, "port": port, "reference": reference, **setup}
    demo.close()


def _generate(client, **kwargs):
    files = client.predict(**{**COMMON, **kwargs}, api_name="/generate")
    assert isinstance(files, list) and files
    return files


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _outward_ip() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent; this only picks the outward interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_server_binds_loopback_only(server):
    import socket

    from moslora_diffusion.webui.server import build_parser

    defaults = build_parser().parse_args([])
    assert defaults.host == "127.0.0.1" and defaults.share is False and defaults.auth is None
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server["port"])) == 0
    ip = _outward_ip()
    if ip is not None:  # the same port on the machine's network address is closed
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((ip, server["port"])) != 0


def test_generate_with_and_without_adapter(server):
    client = server["client"]
    none_a = _generate(client, seed=11)[0]
    none_b = _generate(client, seed=11)[0]
    with_adapter = _generate(client, seed=11, adapter="plain.safetensors", adapter_scale=1.0)[0]
    scale_zero = _generate(client, seed=11, adapter="plain.safetensors", adapter_scale=0.0)[0]
    other_seed = _generate(client, seed=12)[0]
    base = _pixels(none_a)
    assert base.shape == (32, 32, 3)
    assert np.array_equal(base, _pixels(none_b)), "same seed + settings must give the same image"
    assert np.array_equal(base, _pixels(scale_zero)), "adapter_scale 0 must give the no-adapter image"
    assert np.abs(base - _pixels(with_adapter)).mean() > 2.0, "the adapter must change the image"
    assert np.abs(base - _pixels(other_seed)).mean() > 2.0
    # after an adapter was used, the plain image is still the base image
    assert np.array_equal(base, _pixels(_generate(client, seed=11)[0]))


def test_png_parameters_chunk(server):
    files = _generate(
        server["client"],
        seed=77,
        negative_prompt="blurry, dark",
        guidance_scale=4.5,
        adapter="plain.safetensors",
        adapter_scale=0.7,
        num_images=2,
    )
    assert len(files) == 2
    for path, seed in zip(files, (77, 78)):
        with Image.open(path) as im:
            assert im.format == "PNG"
        params = parse_parameters(read_parameters(path))
        assert params["Prompt"] == "a red circle"
        assert params["Negative prompt"] == "blurry, dark"
        assert params["Steps"] == "2" and params["Sampler"] == "DDIM" and params["CFG scale"] == "4.5"
        assert params["Seed"] == str(seed) and params["Size"] == "32x32"
        assert params["Model"] == "base"
        assert params["Adapters"] == "plain.safetensors: 0.7"
    # the second image is exactly what its own seed gives alone
    alone = _generate(server["client"], seed=78, negative_prompt="blurry, dark", guidance_scale=4.5,
                      adapter="plain.safetensors", adapter_scale=0.7)[0]  # fmt: skip
    assert np.array_equal(_pixels(alone), _pixels(files[1]))


def test_defaults_fill_missing_arguments(server):
    files = server["client"].predict(prompt="a blue square", api_name="/generate")
    params = parse_parameters(read_parameters(files[0]))
    d = server["engine"].defaults
    assert params["Steps"] == str(d["steps"]) and params["Size"] == f"{d['width']}x{d['height']}"
    assert "Adapters" not in params and 0 <= int(params["Seed"]) < 2**32


@pytest.mark.parametrize(
    "name",
    [
        "../plain.safetensors",
        "../../etc/passwd",
        "sub/plain.safetensors",
        "..\\plain.safetensors",
        "/tmp/x.safetensors",
    ],
)
def test_traversal_names_refused(server, name):
    with pytest.raises(Exception, match="refused") as info:
        _generate(server["client"], seed=1, adapter=name)
    assert "Traceback" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be between"),
        ({"steps": 10_000}, "steps must be between"),
        ({"steps": 2.5}, "whole number"),
        ({"width": 33}, "multiple of 8"),
        ({"height": 100_000}, "height must be between"),
        ({"guidance_scale": 1e9}, "CFG scale"),
        ({"seed": -5}, "seed must be between"),
        ({"num_images": 100}, "number of images"),
        ({"adapter": "plain.safetensors", "adapter_scale": 5}, "strength"),
        ({"scheduler": "nonsense"}, "unknown scheduler .nonsense."),
        ({"prompt": ""}, "prompt is empty"),
    ],
)
def test_bad_numbers_refused(server, kwargs, message):
    with pytest.raises(Exception, match=message):
        _generate(server["client"], **kwargs)


def test_other_architecture_adapter_refused_with_message(server):
    with pytest.raises(Exception, match=r"attn2.to_k.lora_A.weight. has shape \(4, 64\)") as info:
        _generate(server["client"], seed=1, adapter="xl_only.safetensors")
    assert "Traceback" not in str(info.value)
    # the server still works afterwards
    assert _generate(server["client"], seed=1)


def test_unknown_adapter_refused(server):
    with pytest.raises(Exception, match="no adapter named"):
        _generate(server["client"], seed=1, adapter="nope.safetensors")


def test_compare_grid(server):
    from moslora_diffusion.webui.compare import compare
    from moslora_diffusion.webui.requests import GenerationRequest

    engine = server["engine"]
    req = GenerationRequest(prompt="a red circle", steps=2, width=32, height=32, scheduler="DDIM")
    result = compare(engine, req, "plain.safetensors", [0.0, 0.5, 1.0], [11, 12])
    assert result.strengths == [0.0, 0.5, 1.0] and result.seeds == [11, 12]
    params = parse_parameters(read_parameters(result.path))
    assert params["Adapter"] == "plain.safetensors" and params["Strengths"] == "0 0.5 1"
    grid = np.asarray(Image.open(result.path).convert("RGB"), dtype=np.int16)
    # cell (seed 11, no adapter) equals the plain /generate image, upscaled 4x
    plain = _pixels(_generate(server["client"], seed=11, guidance_scale=engine.defaults["guidance_scale"])[0])
    up = plain.repeat(4, axis=0).repeat(4, axis=1)
    hits = [
        (y, x)
        for y in range(grid.shape[0] - 127)
        for x in range(grid.shape[1] - 127)
        if grid[y, x].tolist() == up[0, 0].tolist() and np.array_equal(grid[y : y + 128, x : x + 128], up)
    ]
    assert hits, "the baseline cell must be the no-adapter image"


@pytest.fixture(scope="module")
def small_queue_server(tmp_path_factory):
    """A server whose queue holds one waiting request."""
    from moslora_diffusion.webui.engine import Engine, Limits
    from moslora_diffusion.webui.ui import build_ui

    setup = make_tiny_setup(tmp_path_factory.mktemp("queue"))
    engine = Engine.from_pretrained(
        setup["base"], setup["adapters"], setup["outputs"], limits=Limits(busy_timeout_s=60)
    )
    demo = build_ui(engine, None)
    demo.queue(max_size=1, default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False), engine
    demo.close()


def _wait_for(predicate, timeout=30.0):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def test_full_queue_answers_clearly_and_one_generation_at_a_time(small_queue_server):
    from gradio_client.utils import Status

    client, engine = small_queue_server
    engine.lock.acquire()  # the device is busy: the first request holds the worker, waiting for the lock
    try:
        first = client.submit(**COMMON, seed=1, api_name="/generate")
        _wait_for(lambda: first.status().code == Status.PROCESSING)
        second = client.submit(**COMMON, seed=2, api_name="/generate")
        _wait_for(lambda: second.status().code in (Status.IN_QUEUE, Status.QUEUE_FULL))
        assert second.status().code == Status.IN_QUEUE  # waits: one generation at a time
        third = client.submit(**COMMON, seed=3, api_name="/generate")
        with pytest.raises(Exception, match="[Qq]ueue is full"):
            third.result(timeout=30)
    finally:
        engine.lock.release()
    assert first.result(timeout=60) and second.result(timeout=60)


def test_busy_device_answers_with_a_message(small_queue_server):
    from moslora_diffusion.webui.requests import Limits

    client, engine = small_queue_server
    old = engine.limits
    engine.limits = Limits(busy_timeout_s=0.5)
    engine.lock.acquire()
    try:
        with pytest.raises(Exception, match="busy with another request"):
            client.predict(**COMMON, seed=1, api_name="/generate")
    finally:
        engine.lock.release()
        engine.limits = old


def test_auth_required_when_asked(tmp_path):
    import argparse

    from moslora_diffusion.webui.server import build_parser, create_app, launch

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--auth", "nopassword"])
    setup = make_tiny_setup(tmp_path)
    port = free_port()
    args = build_parser().parse_args(
        ["--base_model", str(setup["base"]), "--adapters_dir", str(setup["adapters"]), "--output_dir",
         str(setup["outputs"]), "--port", str(port), "--auth", "alice:s3cret", "--no_train"]
    )  # fmt: skip
    assert isinstance(args, argparse.Namespace) and args.auth == ("alice", "s3cret")
    demo, engine, _ = create_app(args)
    launch(demo, args, engine, prevent_thread_lock=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises different types per version
            gradio_client.Client(url, verbose=False).predict(**COMMON, seed=1, api_name="/generate")
        client = gradio_client.Client(url, auth=("alice", "s3cret"), verbose=False)
        assert client.predict(**COMMON, seed=1, api_name="/generate")
        # the plain GET route sits behind the same login
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"{url}api/adapters", timeout=30)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        login = urllib.parse.urlencode({"username": "alice", "password": "s3cret"}).encode()
        opener.open(f"{url}login", data=login, timeout=30)
        listed = json.loads(opener.open(f"{url}api/adapters", timeout=30).read())
        assert [e["name"] for e in listed] == engine.list_adapters()
    finally:
        demo.close()


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "UniPC"])
def test_every_scheduler_generates_reproducibly(server, scheduler):
    a = _generate(server["client"], seed=5, steps=3, scheduler=scheduler)[0]
    b = _generate(server["client"], seed=5, steps=3, scheduler=scheduler)[0]
    assert np.array_equal(_pixels(a), _pixels(b))
    assert parse_parameters(read_parameters(a))["Sampler"] == scheduler


def test_native_moslora_adapter_matches_unfolded_layers(server):
    """A native file (mixer folded on load) gives the image of the model with the MoSLoRA layers injected;
    its kohya export gives the same image; strength 0 gives the base image."""
    import torch
    from diffusers import DDIMScheduler

    client, engine = server["client"], server["engine"]
    info = engine.adapter_info("native.safetensors")
    assert info["kind"] == "moslora" and info["architecture"] == "sd1"
    assert info["rank"] == [2, 4] and info["prompt"] == "a photo of sks blob" and info["steps"] == 123
    assert sorted(info["components"]) == ["text_encoder", "unet"]
    kwargs = {**COMMON, "seed": 21, "steps": 3, "guidance_scale": 5.0}
    native = _pixels(_generate(client, **kwargs, adapter="native.safetensors")[0])
    kohya = _pixels(_generate(client, **kwargs, adapter="native_kohya.safetensors")[0])
    base = _pixels(_generate(client, **kwargs)[0])
    zero = _pixels(_generate(client, **kwargs, adapter="native.safetensors", adapter_scale=0)[0])
    ref_pipe = server["reference"]
    ref_pipe.scheduler = DDIMScheduler.from_config(engine._base_scheduler_config)
    with torch.inference_mode():
        ref = ref_pipe(
            "a red circle", num_inference_steps=3, guidance_scale=5.0, width=32, height=32,
            generator=torch.Generator().manual_seed(21),
        ).images[0]  # fmt: skip
    ref = np.asarray(ref, dtype=np.int16)
    assert np.abs(base - ref).mean() > 2.0, "the adapter must matter for this check to mean anything"
    assert np.abs(native - ref).max() <= 2
    assert np.abs(kohya - ref).max() <= 2
    assert np.array_equal(zero, base)


def test_adapter_tagged_for_another_architecture_refused(server):
    with pytest.raises(Exception, match="was made for sdxl, but the pipeline is sd1"):
        _generate(server["client"], seed=1, adapter="native_xl_tag.safetensors")


def test_train_request_with_a_blocked_upload_gets_a_message(tmp_path):
    """A file Gradio did not take as an upload (here: a path outside its upload folder) gets a message in the Train
    request, not {"error": null}; an image over 20 MiB passes Gradio's limit (that is the 2 GiB adapter limit)
    and is refused by the Train tab's own image check."""
    import json

    import httpx

    from moslora_diffusion.webui.server import build_parser, create_app, launch

    setup = make_tiny_setup(tmp_path)
    port = free_port()
    args = build_parser().parse_args(
        ["--base_model", str(setup["base"]), "--adapters_dir", str(setup["adapters"]), "--output_dir",
         str(setup["outputs"]), "--port", str(port), "--work_dir", str(tmp_path / "work")]
    )  # fmt: skip
    demo, engine, _ = create_app(args)
    launch(demo, args, engine, prevent_thread_lock=True)
    try:
        base = f"http://127.0.0.1:{port}/gradio_api"
        big = tmp_path / "huge.png"
        big.write_bytes(b"\0" * (25 * 2**20))  # over the 20 MiB image limit
        with big.open("rb") as f:
            uploaded = httpx.post(f"{base}/upload", files={"files": f}, timeout=60)
        assert uploaded.status_code == 200
        from moslora_diffusion.webui.jobs import UploadLimits, decode_uploads

        with pytest.raises(ValueError, match="larger than 20 MiB"):
            decode_uploads([uploaded.json()[0]] * 3, tmp_path / "decoded", UploadLimits())
        images = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train-images")
        fn_index = next(i for i, fn in demo.fns.items() if images in fn.inputs)
        n_inputs = len(demo.fns[fn_index].inputs)
        data = [[{"path": str(big), "meta": {"_type": "gradio.FileData"}}]] + [None] * (n_inputs - 1)
        httpx.post(f"{base}/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": "s1"})
        with httpx.stream("GET", f"{base}/queue/data", params={"session_hash": "s1"}, timeout=60) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:") and "process_completed" in line:
                    message = json.loads(line[5:])["output"].get("error")
                    break
        assert message and "not uploaded" in message  # a reason, not {"error": null}
        assert engine.pipe.get_list_adapters() == {}
    finally:
        demo.close()


def test_user_errors_leave_no_traceback_in_the_server_log(server, capfd):
    """Issue "Web UI for daily use", bug 7: an empty prompt is the user's mistake, not a server fault."""
    with pytest.raises(Exception, match="prompt is empty"):
        _generate(server["client"], prompt="   ", seed=1)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_lora_tags_in_the_prompt_work_like_a_slot(server):
    """Issue "Web UI for daily use": A1111's <lora:name:weight>, name = file stem in the adapters folder."""
    client = server["client"]
    tagged = _generate(client, prompt="a red circle <lora:plain:0.8> on blue", seed=5)[0]
    slotted = _generate(
        client, prompt="a red circle on blue", seed=5, adapter="plain.safetensors", adapter_scale=0.8
    )[0]
    assert np.array_equal(_pixels(tagged), _pixels(slotted))
    params = parse_parameters(read_parameters(tagged))
    assert params["Prompt"] == "a red circle on blue" and "plain.safetensors: 0.8" in params["Adapters"]
    with pytest.raises(Exception, match="no adapter named 'nope.safetensors'"):
        _generate(client, prompt="a red circle <lora:nope:1>", seed=5)
    with pytest.raises(Exception, match=r"weight in <lora:plain:lots> must be a number"):
        _generate(client, prompt="a red circle <lora:plain:lots>", seed=5)


def test_api_adapters_list_scheduler_choices_and_png_info(server, tmp_path):
    """Issue "Web UI for daily use", API: a list of adapters with strengths (the single form still works),
    `scheduler` as a choice list, and `/png_info` for our PNGs and AUTOMATIC1111's."""
    from PIL.PngImagePlugin import PngInfo

    client = server["client"]
    single = _generate(client, seed=9, adapter="plain.safetensors", adapter_scale=0.8)[0]
    listed = _generate(client, seed=9, adapters=[["plain.safetensors", 0.8]])[0]
    assert np.array_equal(_pixels(single), _pixels(listed))
    both = _generate(
        client, seed=9, adapter="plain.safetensors", adapter_scale=0.5, adapters=[["other.safetensors", 0.5]]
    )[0]
    assert "other.safetensors: 0.5" in read_parameters(both) and "plain.safetensors: 0.5" in read_parameters(
        both
    )
    with pytest.raises(Exception, match="unknown scheduler .PNDM.; choose one of DDIM"):
        _generate(client, seed=9, scheduler="PNDM")
    text, fields = client.predict(gradio_client.handle_file(single), api_name="/png_info")
    assert text == read_parameters(single) and fields["Seed"] == "9" and fields["Prompt"] == COMMON["prompt"]
    a1111 = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text(
        "parameters",
        "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512",
    )
    Image.new("RGB", (8, 8)).save(a1111, pnginfo=info)
    _, fields = client.predict(gradio_client.handle_file(str(a1111)), api_name="/png_info")
    assert (
        fields["Prompt"] == "a cat"
        and fields["Negative prompt"] == "blurry"
        and fields["Sampler"] == "Euler a"
    )
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(Exception, match="no 'parameters' text chunk"):
        client.predict(gradio_client.handle_file(str(plain)), api_name="/png_info")


def test_img2img_endpoint(server, tmp_path):
    """Issue "Web UI for daily use": img2img with a strength; the same seed and image give the same result."""
    client = server["client"]
    start = tmp_path / "start.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(start)  # resized to the requested size
    other = tmp_path / "other.png"
    Image.new("RGB", (32, 32), (20, 30, 220)).save(other)

    def img2img(path, strength, **kw):
        return client.predict(**{**COMMON, "steps": 6, "seed": 4, **kw}, image=gradio_client.handle_file(str(path)),
                              strength=strength, api_name="/img2img")[0]  # fmt: skip

    a, b = img2img(start, 0.5), img2img(start, 0.5)
    assert np.array_equal(_pixels(a), _pixels(b)) and Image.open(a).size == (32, 32)
    assert not np.array_equal(_pixels(a), _pixels(img2img(other, 0.5)))  # the start image matters
    params = parse_parameters(read_parameters(a))
    assert params["Denoising strength"] == "0.5"
    with pytest.raises(Exception, match="denoising strength must be above 0"):
        img2img(start, 0.0)
    with_adapter = img2img(start, 0.5, adapter="plain.safetensors")
    assert "plain.safetensors: 1" in read_parameters(with_adapter)
    assert not np.array_equal(_pixels(a), _pixels(with_adapter))  # adapters apply to img2img too


def test_the_api_checks_sizes_against_the_pages_bounds(server, capfd):
    """Issue 25: the API took widths up to 2048 while the page offered 32-128 for this 32 px model: one set of
    bounds (¼x to 4x the native size), refused by name, no traceback."""
    capfd.readouterr()
    with pytest.raises(Exception, match="width must be between 32 and 128, got 5000"):
        _generate(server["client"], width=5000, seed=1)
    with pytest.raises(Exception, match="steps must be between 1 and 150, got 0"):
        _generate(server["client"], steps=0, seed=1)
    assert "Traceback" not in "".join(capfd.readouterr())


def test_an_unknown_sampler_is_refused_by_name_without_a_traceback(server, capfd):
    """Issue 25, bug 8: an unknown sampler name sent to the API was refused by Gradio's choice check, with a
    traceback in the server log."""
    capfd.readouterr()
    with pytest.raises(Exception, match="unknown scheduler 'Euler z'; choose one of"):
        _generate(server["client"], scheduler="Euler z", seed=1)
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_a_corrupt_start_image_is_named_in_one_line(server, tmp_path, capfd):
    """Issue 25, bug 2: random bytes named .png as the img2img start image: our message naming the upload, not
    Gradio's preprocessing internals (with its temporary path) and no traceback in the server log."""
    bad = tmp_path / "random.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    capfd.readouterr()
    with pytest.raises(Exception) as info:
        server["client"].predict(**{**COMMON, "steps": 2, "seed": 1}, image=gradio_client.handle_file(str(bad)),
                                 strength=0.5, api_name="/img2img")  # fmt: skip
    text = str(info.value)
    assert "the start image 'random.png' is not an image file" in text
    assert "preprocess" not in text and "UnidentifiedImageError" not in text
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out


def test_png_info_answers_a_huge_or_badly_escaped_chunk_at_once(server, tmp_path):
    """Issue "Same seed, same adapter", fault 1: a 1 MB parameters chunk held the server for minutes."""
    import time

    from PIL.PngImagePlugin import PngInfo

    client = server["client"]
    for name, text in (("huge", "p\n" + "a" * 1_000_000), ("escape", 'p\nSteps: 2, Seed: 3, Bad: "a\\qb"')):
        info = PngInfo()
        info.add_text("parameters", text)
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png", pnginfo=info)
    started = time.monotonic()
    with pytest.raises(Exception, match="more than the 65,536"):
        client.predict(gradio_client.handle_file(str(tmp_path / "huge.png")), api_name="/png_info")
    _, fields = client.predict(gradio_client.handle_file(str(tmp_path / "escape.png")), api_name="/png_info")
    assert fields["Bad"] == "a\\qb" and fields["Seed"] == "3"
    assert time.monotonic() - started < 20


def test_adapter_list_endpoint_and_get_route(server):
    """Issue 25: the adapter list through gradio_client and a plain GET, with architecture, rank, trigger and
    whether each fits the loaded model (a misfit named, without the server's paths); sample images noticed."""
    client, adapters = server["client"], server["adapters"]
    preview = adapters / "native.preview.png"
    Image.new("RGB", (8, 8), "red").save(preview)
    try:
        listed = client.predict(api_name="/adapters")
        by_name = {e["name"]: e for e in listed}
        assert list(by_name) == server["engine"].list_adapters()
        native = by_name["native.safetensors"]
        assert native["fits"] and native["problem"] is None and native["preview"] is True
        assert native["kind"] == "moslora" and native["architecture"] == "sd1"
        assert sorted(native["rank"]) == [2, 4]  # the UNet's rank 4 and the text encoder's rank 2
        assert native["trigger"] == "a photo of sks blob" and native["steps"] == 123
        assert by_name["plain.safetensors"]["fits"] and by_name["plain.safetensors"]["preview"] is False
        for misfit in ("xl_only.safetensors", "native_xl_tag.safetensors"):
            entry = by_name[misfit]
            assert entry["fits"] is False and misfit in entry["problem"]
            assert str(adapters) not in entry["problem"] and str(adapters.resolve()) not in entry["problem"]
        url = f"http://127.0.0.1:{server['port']}/api/adapters"
        assert json.loads(urllib.request.urlopen(url, timeout=30).read()) == listed
    finally:
        preview.unlink()


def test_one_model_name_in_header_menu_and_png(server):
    """Issue 25: the header, the model menu and the PNG's Model field name the base model the same way."""
    from moslora_diffusion.webui.ui import _header

    engine = server["engine"]
    path = _generate(server["client"], seed=3)[0]
    name = parse_parameters(read_parameters(path))["Model"]
    assert name == engine.model_name and engine.models[name] == engine.base_model
    assert f"Base model: `{name}`" in _header(engine, "t")
