"""A real browser against the launcher: Debian's chromium driven by Playwright types a prompt, clicks
Generate, waits for the image and saves a screenshot under test-artifacts/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.webui_support import FakeTraining, free_port, make_tiny_setup, wait_for_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
# WEBUI_PROMPT with WEBUI_BASE_MODEL / WEBUI_ADAPTERS_DIR: the docs screenshots with a real model and adapter
PROMPT = os.environ.get("WEBUI_PROMPT", "a red circle on a blue background")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    setup = make_tiny_setup(tmp_path_factory.mktemp("browser"))
    port = free_port()
    log = open(setup["root"] / "app.log", "w")  # noqa: SIM115 - closed below
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    # WEBUI_BASE_MODEL / WEBUI_ADAPTERS_DIR (holding plain.safetensors for that model) refresh the docs
    # screenshot with a real model, e.g. the toy-world base and an adapter trained on it
    base = os.environ.get("WEBUI_BASE_MODEL") or str(setup["base"])
    adapters = os.environ.get("WEBUI_ADAPTERS_DIR") or str(setup["adapters"])
    cmd = [sys.executable, str(ROOT / "app" / "app.py"), "--base_model", base]
    from moslora_diffusion.tiny import save_tiny_pipeline

    models = setup["root"] / "models"
    save_tiny_pipeline("sdxl", models / "tiny-xl")  # a second base model for the model menu
    cmd += [
        "--adapters_dir",
        adapters,
        "--output_dir",
        str(setup["outputs"]),
        "--port",
        str(port),
        "--models_dir",
        str(models),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=setup["root"])
    try:
        wait_for_port(proc, port)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_browser_generates_an_image(app_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load", timeout=60_000)
            page.locator("#prompt textarea").wait_for(state="visible", timeout=60_000)
            page.locator("#prompt textarea").fill(PROMPT)
            # pick the adapter in slot 1 through the UI, as a user would
            page.locator("#adapter-1 input").fill("plain.safetensors")
            page.keyboard.press("Enter")
            page.locator("#adapter-info-1").get_by_text("LoRA (diffusers/PEFT)").wait_for(timeout=30_000)
            page.locator("#enable-1 input[type=checkbox]").wait_for(timeout=10_000)
            assert page.locator("#enable-1 input[type=checkbox]").is_checked()
            page.locator("#steps input[type=number]").fill("4")
            page.locator("#steps input[type=number]").press("Enter")
            assert page.locator("#stop-btn").is_visible()
            page.locator("#prompt textarea").press("Control+Enter")  # generates, as in AUTOMATIC1111
            image = page.locator("#gallery img").first
            image.wait_for(state="visible", timeout=120_000)
            src = image.get_attribute("src") or ""
            assert src.endswith(".png") or "png" in src, src
            # shown whole: a wide image is letterboxed, never cropped to a square (issue 25, bug 10)
            assert image.evaluate("el => getComputedStyle(el).objectFit") == "contain"
            params = page.get_by_label("Parameters (PNG 'parameters' chunk)")
            page.wait_for_function(
                "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('Steps:'))",
                timeout=30_000,
            )
            text = params.input_value()
            assert text.startswith(PROMPT) and "Seed:" in text and "Steps: 4," in text
            assert "plain.safetensors: 1" in text
            used = page.locator("#used-seed textarea").input_value()
            assert used.isdigit() and f"Seed: {used}," in text
            assert page.locator("#downloads a[download]").count() >= 1
            assert (
                page.locator("#downloads button").count() == 0
            )  # read-only: download links, no delete buttons
            rendering = page.locator("#gallery img").first.evaluate(
                "img => getComputedStyle(img).imageRendering"
            )
            assert rendering == "pixelated"  # small images enlarged pixel by pixel, not blurred
            page.locator("#width").get_by_text("Width (32–128)").wait_for(
                timeout=5_000
            )  # ¼x to 4x the native 32 px
            # a number outside its range is refused by name, never clamped while the box shows it (issue 25, bug 7)
            page.locator("#steps input[type=number]").fill("0")
            page.locator("#prompt textarea").press("Control+Enter")
            page.get_by_text("steps must be between 1 and 150, got 0").first.wait_for(timeout=30_000)
            assert page.locator("#steps input[type=number]").input_value() == "0"
            page.locator("#steps input[type=number]").fill("4")
            page.locator("#reuse-seed").click()  # "reuse seed": the seed box takes it, random seed goes off
            page.wait_for_function(
                "(used) => [...document.querySelectorAll('input[type=number]')].some(i => i.value === used)",
                arg=used,
                timeout=10_000,
            )
            assert not page.get_by_label("Random seed").is_checked()
            # History: the new image is on the first page; picking it shows its parameters
            page.get_by_role("tab", name="History").click()
            page.locator("#history-refresh").click()
            page.locator("#history img").first.wait_for(state="visible", timeout=20_000)
            page.locator("#history img").first.click()
            page.wait_for_function(
                "(used) => document.querySelector('#history-parameters textarea').value.includes('Seed: ' + used)",
                arg=used,
                timeout=20_000,
            )
            page.get_by_role("tab", name="Generate").click()
            # -1 in the seed box means random, as the label says (issue 25, bug 1): no error, a new seed
            page.evaluate(
                "() => document.querySelectorAll('.toast-body').forEach(t => t.remove())"
            )  # earlier toasts
            page.get_by_label("Random seed").uncheck()
            page.locator("#seed input").fill("-1")
            page.locator("#seed input").press("Enter")
            page.locator("#prompt textarea").press("Control+Enter")
            page.wait_for_function(
                f"() => {{ const t = document.querySelector('#used-seed textarea'); return t && t.value && t.value !== '{used}'; }}",
                timeout=120_000,
            )
            assert page.locator("#used-seed textarea").input_value().isdigit()
            assert page.locator(".toast-body.error").count() == 0
            page.screenshot(path=str(ARTIFACTS / "webui_generate.png"), full_page=True)
            if os.environ.get("WEBUI_SCREENSHOT_TO"):  # refresh docs/images/webui_generate.png
                page.screenshot(path=os.environ["WEBUI_SCREENSHOT_TO"], full_page=True)
            # X/Y plot tab: baseline + strengths 0.5, 1 for seeds 1, 2 in one labelled grid (the default axes)
            page.get_by_role("tab", name="X/Y plot").click()
            page.locator("#compare-prompt textarea").fill(PROMPT)
            page.locator("#compare-adapter input").fill("plain.safetensors")
            page.keyboard.press("Enter")
            page.locator("#compare-btn").click()
            page.locator("#compare-grid img").wait_for(state="visible", timeout=120_000)
            page.locator("#compare-params textarea").wait_for(timeout=10_000)
            page.wait_for_function(
                "() => document.querySelector('#compare-params textarea').value.includes('Strengths: 0 0.5 1')",
                timeout=30_000,
            )
            # any two axes (issue 25): picking an axis shows what it takes, with an example to edit
            page.locator("#x-axis input").click()
            page.get_by_role("option", name="Steps", exact=True).click()
            page.wait_for_function(
                "() => document.querySelector('#x-values textarea').value === '10, 20, 30'", timeout=10_000
            )
            page.locator("#x-values textarea").fill("2, 3")
            page.locator("#y-axis input").click()
            page.locator(
                "[role=option][aria-label=Sampler][aria-setsize='7']"
            ).click()  # Y's list (with None)
            page.locator("#y-values textarea").fill("DDIM, Euler a")
            page.locator("#compare-btn").click()
            page.wait_for_function(
                "() => { const v = document.querySelector('#compare-params textarea').value;"
                " return v.includes('\"Steps: 2 3\"') && v.includes('\"Sampler: DDIM, Euler a\"'); }",
                timeout=120_000,
            )
            page.screenshot(path=str(ARTIFACTS / "webui_compare.png"), full_page=True)
            if os.environ.get("WEBUI_COMPARE_SCREENSHOT_TO"):  # refresh docs/images/webui_compare.png
                page.screenshot(path=os.environ["WEBUI_COMPARE_SCREENSHOT_TO"], full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "webui_generate.png").stat().st_size > 10_000


def test_browser_shows_images_as_they_finish_with_a_live_preview(app_url):
    """Issue 25: with two images, the first is in the gallery while the second is still being denoised; a
    live preview shows during the run (hidden after it) and the progress says "image n of m"."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load", timeout=60_000)
            page.locator("#prompt textarea").wait_for(state="visible", timeout=60_000)
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#steps input[type=number]").fill("150")
            page.locator("#n-images input[type=number]").fill("2")
            page.evaluate(
                """() => { window.__seen = []; setInterval(() => {
                    const preview = document.querySelector('#live-preview img');
                    window.__seen.push({images: document.querySelectorAll('#gallery img').length,
                        preview: !!(preview && preview.offsetParent !== null),
                        text: document.body.innerText}); }, 30); }"""
            )
            page.locator("#generate-btn").click()
            page.wait_for_function(
                "() => document.querySelectorAll('#gallery img').length >= 2"
                " && !document.querySelector('#live-preview img')",
                timeout=180_000,
            )
            seen = page.evaluate("() => window.__seen")
            assert any(s["preview"] for s in seen), "no live preview was shown"
            during = [s for s in seen if s["images"] == 1]
            assert during, "the first image only appeared with the second"
            assert any(s["preview"] for s in during), (
                "no preview of the second image after the first was shown"
            )
            assert any("image 2 of 2" in s["text"] for s in seen)
            assert page.locator("#live-preview img").count() == 0
        finally:
            browser.close()


@pytest.fixture(scope="module")
def train_app_url(tmp_path_factory):
    """An in-process app whose Train tab runs a stand-in trainer (the real one is tested elsewhere)."""
    from moslora_diffusion.webui.engine import Engine
    from moslora_diffusion.webui.jobs import TrainingJobs
    from moslora_diffusion.webui.ui import build_ui

    setup = make_tiny_setup(tmp_path_factory.mktemp("browser-train"))
    engine = Engine.from_pretrained(setup["base"], setup["adapters"], setup["outputs"])
    backend = FakeTraining(setup["adapters"] / "plain.safetensors", step_delay=0.25)
    jobs = TrainingJobs(str(setup["base"]), setup["adapters"], setup["root"] / "work", backend=backend)
    demo = build_ui(engine, jobs)
    demo.queue(max_size=4, default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    images = []
    for i in range(3):
        path = setup["root"] / f"subject{i}.png"
        Image.new("RGB", (40, 40), (50 * i, 120, 200)).save(path)
        images.append(str(path))
    yield f"http://127.0.0.1:{port}/", images, setup
    demo.close()


def test_browser_train_tab(train_app_url):
    from playwright.sync_api import sync_playwright

    url, images, setup = train_app_url
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            page.locator("#train-images input[type=file]").set_input_files(images)
            try:
                page.locator("#train-images").get_by_text("subject2").first.wait_for(timeout=30_000)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "webui_train_failure.png"), full_page=True)
                raise
            page.locator("#train-thumbnails img").nth(2).wait_for(
                state="visible", timeout=20_000
            )  # thumbnails
            assert page.locator("#train-keep-on-cancel input[type=checkbox]").is_checked()
            page.locator("#train-prompt textarea").fill("a photo of sks toy")
            page.locator("#train-name textarea").fill("subject-toy")
            page.locator("#train-start").click()
            # progress appears while it runs, then the job ends and reports the new adapter
            page.wait_for_function(
                "() => { const p = document.querySelector('#train-progress progress');"
                " return p && p.value > 0 && p.value < p.max; }",
                timeout=60_000,
            )
            page.locator("#train-message").get_by_text("done: subject-toy.safetensors").wait_for(
                timeout=90_000
            )
            page.wait_for_function(
                "() => { const p = document.querySelector('#train-progress progress');"
                " return p && p.value == p.max && p.max == 200; }",
                timeout=10_000,
            )
            page.locator("#train-preview img").wait_for(state="visible", timeout=10_000)
            page.locator("#train-preview").get_by_text("a photo of sks toy").wait_for(
                timeout=10_000
            )  # labelled
            assert "step 200" in page.locator("#train-preview").inner_text()
            # the learning signals are drawn live, next to the loss
            page.locator("#train-signals").get_by_text("Learning signals").wait_for(timeout=10_000)
            assert not page.locator("#train-stop-when-learned input[type=checkbox]").is_checked()
            page.screenshot(path=str(ARTIFACTS / "webui_train.png"), full_page=True)
            # the new adapter is selectable at once in the Generate tab
            page.get_by_role("tab", name="Generate").click()
            page.locator("#adapter-1 input").click()
            page.get_by_role("option", name="subject-toy.safetensors").wait_for(timeout=10_000)
        finally:
            browser.close()
    assert (setup["adapters"] / "subject-toy.safetensors").is_file()


def test_browser_example_subject_fills_in_its_recipe(train_app_url):
    """Issue 25, bug 4: picking the example subject shows (and trains) the quick start's recipe."""
    from playwright.sync_api import sync_playwright

    from moslora_diffusion.toyworld import get_subject, subject_training_defaults

    url, _, _ = train_app_url
    recipe = subject_training_defaults(get_subject("circle"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="Train").click()
            page.locator("#train-example-subject input").click()
            page.get_by_role("option", name="Example subject, circle").first.click()
            page.wait_for_function(
                "() => document.querySelector('#train-prompt textarea').value === 'a sks circle'",
                timeout=10_000,
            )
            numbers = page.locator("#train-settings input[type=number]")
            values = [numbers.nth(i).input_value() for i in range(3)]
            assert [float(v) for v in values] == [
                recipe["max_train_steps"],
                recipe["rank"],
                recipe["learning_rate"],
            ]
        finally:
            browser.close()


def test_browser_refused_adapter_unticks_and_lists_are_current_after_reload(train_app_url):
    """Issue "Web UI for daily use", bugs 3 and 4: the refusal shows inline and the slot is unticked; a file
    copied into the adapters folder is listed after a reload without pressing Refresh (Compare tab too)."""
    from playwright.sync_api import sync_playwright

    url, _, setup = train_app_url
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            assert page.locator("#used-seed textarea").input_value() == ""  # not 0 before a generation
            page.locator("#prompt textarea").fill(
                "a red circle on a blue background " * 10
            )  # live token count
            page.locator("#prompt-tokens").get_by_text("cut off").wait_for(timeout=20_000)
            page.locator("#prompt textarea").fill("a red circle")
            page.wait_for_function(
                "() => !document.querySelector('#prompt-tokens').innerText.includes('cut off')",
                timeout=20_000,
            )
            page.locator("#adapter-1 input").fill("xl_only.safetensors")
            page.keyboard.press("Enter")
            page.locator("#adapter-info-1").get_by_text("refused").wait_for(timeout=30_000)
            assert "lora_A.weight' has shape" in page.locator("#adapter-info-1").inner_text()
            page.wait_for_function(
                "() => !document.querySelector('#enable-1 input[type=checkbox]').checked", timeout=10_000
            )
            # a new file, then a reload: listed at once in Generate and Compare
            (setup["adapters"] / "fresh.safetensors").write_bytes(
                (setup["adapters"] / "plain.safetensors").read_bytes()
            )
            page.reload(wait_until="load")
            page.locator("#adapter-2 input").click()
            page.get_by_role("option", name="fresh.safetensors").wait_for(timeout=20_000)
            page.keyboard.press("Escape")
            page.get_by_role("tab", name="X/Y plot").click()
            page.locator("#compare-adapter input").click()
            page.get_by_role("option", name="fresh.safetensors").wait_for(timeout=20_000)
            assert page.locator("#compare-refresh").is_visible()
        finally:
            browser.close()


def test_browser_png_info_sends_every_field_to_generate(app_url, tmp_path):
    """Issue "Web UI for daily use": drop a PNG, read its parameters, Send to Generate fills the fields."""
    from PIL.PngImagePlugin import PngInfo
    from playwright.sync_api import sync_playwright

    from moslora_diffusion.webui.pngmeta import format_adapters, format_parameters

    text = format_parameters(
        "a blue square on a red background",
        "blurry",
        {"Steps": 3, "Sampler": "Euler a", "CFG scale": "4.5", "Seed": 123, "Size": "32x40",
         "Adapters": format_adapters([("plain.safetensors", 0.7)])},
    )  # fmt: skip
    png = tmp_path / "made_elsewhere.png"
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (32, 40), "white").save(png, pnginfo=info)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="PNG info").click()
            page.locator("#png-info-file input[type=file]").set_input_files(str(png))
            page.wait_for_function(
                "() => document.querySelector('#png-info-text textarea').value.includes('Seed: 123')",
                timeout=30_000,
            )
            page.locator("#png-info-send").click()
            page.locator("#prompt textarea").wait_for(state="visible", timeout=20_000)
            page.wait_for_function(
                "() => document.querySelector('#prompt textarea').value === 'a blue square on a red background'",
                timeout=20_000,
            )
            assert page.locator("#negative-prompt textarea").input_value() == "blurry"
            assert page.locator("#seed input").input_value() == "123"
            assert not page.get_by_label("Random seed").is_checked()
            assert page.locator("#steps input[type=number]").input_value() == "3"
            assert page.locator("#adapter-1 input").input_value() == "plain.safetensors"
            assert page.locator("#enable-1 input[type=checkbox]").is_checked()
        finally:
            browser.close()


def test_browser_switches_the_base_model(app_url):
    """Issue "Web UI for daily use": the base-model menu loads another model; picked adapters are re-checked."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url, wait_until="load", timeout=60_000)
            page.locator("#adapter-1 input").fill("plain.safetensors")
            page.keyboard.press("Enter")
            page.locator("#adapter-info-1").get_by_text("LoRA (diffusers/PEFT)").wait_for(timeout=30_000)
            page.locator("#base-model input").click()
            page.get_by_role("option", name="tiny-xl").click()
            page.locator("#header").get_by_text("(sdxl)").wait_for(timeout=120_000)
            page.locator("#adapter-info-1").get_by_text("refused").wait_for(timeout=30_000)  # SD1 adapter
            assert not page.locator("#enable-1 input[type=checkbox]").is_checked()
            page.locator("#base-model input").click()
            page.get_by_role("option", name="base").click()  # back, for the other tests of this app
            page.locator("#header").get_by_text("(sd1)").wait_for(timeout=120_000)
        finally:
            browser.close()


def test_browser_adapter_cards_upload_and_sample(train_app_url, tmp_path):
    """Issue 25: the Adapters tab shows a card per adapter; a click puts its tag in the Generate prompt; an
    upload is checked (a broken file is refused by name and not listed) and then listed everywhere; "Make
    sample image" gives a card its picture."""
    from playwright.sync_api import sync_playwright

    url, _, setup = train_app_url
    folder = setup["adapters"]
    good, junk = tmp_path / "uploaded.safetensors", tmp_path / "junk.safetensors"
    good.write_bytes((folder / "plain.safetensors").read_bytes())
    junk.write_bytes(b"not an adapter at all" * 10)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load", timeout=60_000)
            page.get_by_role("tab", name="Adapters").click()
            cards = page.locator("#adapter-cards .thumbnail-item")
            page.wait_for_function(
                "(n) => document.querySelectorAll('#adapter-cards .thumbnail-item').length === n",
                arg=len(list(folder.glob("*.safetensors"))),
                timeout=30_000,
            )
            page.locator("#adapter-upload input[type=file]").set_input_files(str(junk))
            page.locator("#adapter-upload-note").get_by_text("refused").wait_for(timeout=30_000)
            assert "junk.safetensors" in page.locator("#adapter-upload-note").inner_text()
            assert not (folder / "junk.safetensors").exists()
            page.locator("#adapter-upload button[aria-label='Clear']").first.click()
            page.locator("#adapter-upload input[type=file]").set_input_files(str(good))
            page.locator("#adapter-upload-note").get_by_text("added uploaded.safetensors").wait_for(
                timeout=30_000
            )
            assert (folder / "uploaded.safetensors").read_bytes() == good.read_bytes()
            names = sorted((f.name for f in folder.glob("*.safetensors")), key=str.lower)
            page.wait_for_function(
                "(n) => document.querySelectorAll('#adapter-cards .thumbnail-item').length === n",
                arg=len(names),
                timeout=30_000,
            )
            page.get_by_role("tab", name="Generate").click()
            page.locator("#adapter-2 input").click()
            page.get_by_role("option", name="uploaded.safetensors").wait_for(timeout=20_000)
            page.keyboard.press("Escape")
            page.locator("#prompt textarea").fill("a red circle")
            page.get_by_role("tab", name="Adapters").click()
            cards.nth(names.index("plain.safetensors")).click()  # the tag goes to Generate, which is shown
            page.wait_for_function(
                "() => document.querySelector('#prompt textarea').value === 'a red circle <lora:plain:1>'"
                " && document.querySelector('#prompt textarea').offsetParent !== null",
                timeout=20_000,
            )
            page.get_by_role("tab", name="Adapters").click()
            assert page.locator("#picked-adapter textarea").input_value() == "plain.safetensors"
            page.locator("#make-sample").click()  # a plain LoRA records no prompt: asked for one
            page.locator("#make-sample-note").get_by_text("records no training prompt").wait_for(
                timeout=30_000
            )
            page.get_by_label("Sample image prompt (default: its training prompt)").fill("a red circle")
            page.locator("#make-sample").click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('#adapter-cards img')].some(i => i.src.includes('plain.preview'))",
                timeout=60_000,
            )
            assert (folder / "plain.preview.png").is_file()
            page.screenshot(path=str(ARTIFACTS / "webui_adapters.png"), full_page=True)
        finally:
            browser.close()
