"""Retake the README's Train-tab screenshot on a real run: the web UI on the bundled toy-world model trains the
bundled circle example with its recipe, in Debian's chromium driven by Playwright, and the page is captured
when the job is done (loss curves, the last preview and the live quality curve).

    python scripts/screenshot_train_tab.py [--out docs/images/webui_train.png] [--subject circle]

Needs the `app` extra and /usr/bin/chromium (as the browser tests do); about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.webui_support
CHROMIUM = "/usr/bin/chromium"
from moslora_diffusion.webui.tab_train import example_choices  # noqa: E402

LABELS = {key: label for label, key in example_choices() if key}  # the Train tab's own menu entries


def _fill_number(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Tab")


def take(out: Path, subject: str) -> None:
    from playwright.sync_api import sync_playwright

    from moslora_diffusion.durable import replace_durably
    from moslora_diffusion.toyworld import get_subject
    from moslora_diffusion.toyworld.defaults import subject_training_defaults
    from tests.webui_support import free_port, wait_for_port  # the browser tests' helpers

    recipe = subject_training_defaults(get_subject(subject))
    with tempfile.TemporaryDirectory(prefix="screenshot-train-") as tmp:
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        cmd = [sys.executable, "-m", "moslora_diffusion.cli", "app", "--port", str(port),
               "--adapters_dir", f"{tmp}/adapters", "--output_dir", f"{tmp}/outputs", "--work_dir", f"{tmp}/work"]  # fmt: skip
        with open(Path(tmp) / "app.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_port(proc, port)
                with sync_playwright() as p:
                    browser = p.chromium.launch(
                        executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
                    )
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=60_000)
                    page.get_by_role("tab", name="Train").click()
                    page.locator("#train-example-subject input").click()
                    page.get_by_role("option", name=LABELS[subject]).click()
                    page.locator("#train-name textarea").fill(f"example-{subject}")
                    _fill_number(page, "Steps", str(recipe["max_train_steps"]))
                    _fill_number(page, "Rank", str(recipe["rank"]))
                    _fill_number(page, "Learning rate", str(recipe["learning_rate"]))
                    page.locator("#train-start").click()
                    print(
                        f"training the {subject} example ({recipe['max_train_steps']} steps) in the web UI ..."
                    )
                    page.locator("#train-message").get_by_text(
                        f"done: example-{subject}.safetensors"
                    ).wait_for(timeout=900_000)
                    page.locator("#train-quality").wait_for(state="visible", timeout=30_000)
                    time.sleep(2)  # let the plots finish drawing
                    partial = out.with_name(out.name + ".partial.png")
                    page.screenshot(path=str(partial), full_page=True)
                    browser.close()
                replace_durably(partial, out)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "webui_train.png")
    ap.add_argument("--subject", choices=sorted(LABELS), default="circle")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium)")
    take(args.out, args.subject)


if __name__ == "__main__":
    main()
