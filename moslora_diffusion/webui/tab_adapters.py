"""The Adapters tab: a card per adapter (sample image, name, architecture, rank, trigger); a click puts
``<lora:name:1>`` into the Generate prompt; upload an adapter file; make a card's sample image."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import RequestError
from ..imaging import text_card
from .adapter_files import ADAPTER_SUFFIX, add_adapter_file
from .engine import Engine
from .widgets import DEVICE, PRIVATE, REFUSED, adapter_info_markdown, user_errors

logger = logging.getLogger(__name__)

# the largest adapter file the page accepts (an SDXL rank-128 adapter with text encoders is about 1 GiB)
MAX_ADAPTER_UPLOAD_BYTES = 2 * 1024**3


def card_caption(entry: dict[str, Any]) -> str:
    """One line under a card: name, architecture, rank, trigger; and whether it does not fit the loaded model."""
    return " · ".join(_card_facts(entry))


def _card_facts(entry: dict[str, Any]) -> list[str]:
    stem = entry["name"].removesuffix(ADAPTER_SUFFIX)
    rank = entry.get("rank")
    parts = [stem, entry.get("architecture") or "unknown architecture"]
    if rank is not None:
        parts.append(f"rank {'/'.join(map(str, rank)) if isinstance(rank, list) else rank}")
    if entry.get("trigger"):
        parts.append(f"“{entry['trigger']}”")
    if not entry.get("fits"):
        parts.append("does not fit this model")
    return parts


def adapter_cards(engine: Engine) -> tuple[list[tuple[Any, str]], list[str]]:
    """(gallery items, adapter names in the same order): the sample image where there is one, else a card."""
    items, names = [], []
    for entry in engine.adapter_catalog():
        image = entry.get("preview")
        if image is None:
            image = text_card([*_card_facts(entry), "(no sample image)"])
        items.append((image, card_caption(entry)))
        names.append(entry["name"])
    return items, names


def insert_tag(prompt: str | None, name: str) -> str:
    """``prompt`` with ``<lora:stem:1>`` appended (once)."""
    tag = f"<lora:{name.removesuffix(ADAPTER_SUFFIX)}:1>"
    prompt = (prompt or "").rstrip()
    if tag in prompt:
        return prompt
    return f"{prompt} {tag}" if prompt else tag


def build_adapters_tab(engine: Engine, prompt: Any, tabs: Any, dropdowns: list[Any]) -> tuple[Any, Any]:
    """Lay out the tab; returns (the gallery, the names state) for the page's load. ``prompt`` is the Generate
    tab's prompt box, ``tabs`` the page's tabs, ``dropdowns`` the adapter menus an upload refreshes."""
    gr.Markdown(
        "Click a card to add its `<lora:name:1>` tag to the Generate prompt. Sample images are "
        "`name.preview.png` next to the adapter (AUTOMATIC1111's convention); **Make sample image** draws one."
    )
    names = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Adapters", columns=4, height="auto", allow_preview=False,
                                 object_fit="contain", elem_id="adapter-cards")  # fmt: skip
            refresh = gr.Button("Refresh", size="sm", elem_id="adapter-cards-refresh")
        with gr.Column(scale=2):
            picked = gr.Textbox(label="Picked adapter", interactive=False, elem_id="picked-adapter")
            details = gr.Markdown("", elem_id="picked-adapter-info")
            sample_prompt = gr.Textbox(label="Sample image prompt (default: its training prompt)", lines=1)
            sample = gr.Button("Make sample image", elem_id="make-sample")
            sample_note = gr.Markdown("", elem_id="make-sample-note")
            upload = gr.File(label="Add an adapter (.safetensors)", file_types=[ADAPTER_SUFFIX], type="filepath",
                             elem_id="adapter-upload")  # fmt: skip
            upload_note = gr.Markdown("", elem_id="adapter-upload-note")

    def cards():
        items, listed = adapter_cards(engine)
        return items, listed

    def choose(prompt_text: str, listed: list[str], evt: gr.SelectData):
        name = listed[evt.index]
        text = adapter_info_markdown(engine, name)
        if text.startswith(REFUSED):  # shown, but its tag is not added: it would be refused on Generate
            return prompt_text, name, text, gr.skip()
        return insert_tag(prompt_text, name), name, text, gr.Tabs(selected="generate")

    def make_sample(name: str, text: str, progress=gr.Progress()):
        """A refusal is written under the button: a toast would mark the cards as failed."""
        try:
            with user_errors("sample image"):
                if not name:
                    raise RequestError("pick an adapter card first")
                progress(0.1, desc=f"drawing {name}")
                path = engine.make_sample(name, text)
        except gr.Error as exc:
            return f"{REFUSED} {html.escape(str(exc.message))}", gr.skip(), gr.skip()
        return f"sample image of {name}: `{path.name}`", *cards()

    def add(path: str | None):
        """Check and add an uploaded file; a refusal is written under the upload, the lists are left as they are."""
        keep = [gr.skip()] * (2 + len(dropdowns))
        if not path:
            return "", *keep
        name = Path(path).name
        try:
            with user_errors("adding the adapter"):
                info = add_adapter_file(engine.adapters_dir, path, name, MAX_ADAPTER_UPLOAD_BYTES)
        except gr.Error as exc:
            return f"{REFUSED} {html.escape(str(exc.message))}", *keep
        fit = adapter_info_markdown(engine, name)
        note = f"**added {name}** ({info['format']})"
        if fit.startswith(REFUSED):
            note += f"; it does not fit the loaded model: {fit[len(REFUSED) :].strip()}"
        return note, *cards(), *[gr.update(choices=engine.list_adapters())] * len(dropdowns)

    refresh.click(cards, None, [gallery, names], **PRIVATE, queue=False)
    gallery.select(choose, [prompt, names], [prompt, picked, details, tabs], **PRIVATE, queue=False)
    sample.click(make_sample, [picked, sample_prompt], [sample_note, gallery, names], **PRIVATE, **DEVICE)
    upload.upload(add, upload, [upload_note, gallery, names, *dropdowns], **PRIVATE)
    return gallery, names
