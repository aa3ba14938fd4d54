"""The History and PNG-info tabs: earlier images, and the settings an image was made with."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from .engine import Engine
from .tab_generate import GenerateTab, settings_updates
from .widgets import PRIVATE, png_info, user_errors

logger = logging.getLogger(__name__)


def build_history_tab(engine: Engine, generate: GenerateTab, tabs: Any) -> Any:
    """Past outputs, newest first, a page at a time; a picked image shows its parameters. Returns the
    refresh button (pressed after each generation)."""
    with gr.Row():
        prev_btn = gr.Button("◀ Newer", size="sm", elem_id="history-prev")
        page_label = gr.Markdown("page 1 / 1", elem_id="history-page")
        next_btn = gr.Button("Older ▶", size="sm", elem_id="history-next")
        refresh = gr.Button("Refresh", size="sm", elem_id="history-refresh")
    page = gr.State(1)
    gallery = gr.Gallery(
        label="History",
        format="png",
        columns=6,
        height="auto",
        elem_id="history",
        type="filepath",
        object_fit="contain",
    )
    text = gr.Textbox(label="parameters", lines=4, interactive=False, elem_id="history-parameters")
    fields = gr.JSON(visible=False)
    send = gr.Button("Send to Generate", elem_id="history-send")

    def show(number: int, step: int = 0):
        with user_errors("history"):
            _, pages = engine.history(1)
            number = min(max(1, int(number) + step), pages)
            files, pages = engine.history(number)
        return number, [str(p) for p in files], f"page {number} / {pages}"

    def picked(evt: gr.SelectData, number: int):
        files, _ = engine.history(int(number))
        if evt.index is None or evt.index >= len(files):
            return "", {}
        return png_info(str(files[evt.index]))

    outputs = [page, gallery, page_label]
    refresh.click(lambda n: show(n), page, outputs, **PRIVATE, queue=False)
    prev_btn.click(lambda n: show(n, -1), page, outputs, **PRIVATE, queue=False)
    next_btn.click(lambda n: show(n, +1), page, outputs, **PRIVATE, queue=False)
    gallery.select(picked, page, [text, fields], **PRIVATE, queue=False)
    send.click(
        lambda f: [*settings_updates(f or {}), gr.Tabs(selected="generate")],
        fields,
        [*generate.settings_outputs, tabs],
        **PRIVATE,
        queue=False,
    )
    return refresh, (lambda: show(1)), outputs


def build_png_info_tab(generate: GenerateTab, tabs: Any) -> None:
    """Drop a PNG (ours or AUTOMATIC1111's) to read its `parameters`; Send to Generate fills every field."""
    with gr.Row():
        with gr.Column():
            # a File, not an Image: an Image upload may be re-encoded, which drops the text chunk
            upload = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="png-info-file")
        with gr.Column():
            text = gr.Textbox(label="parameters", lines=6, interactive=False, elem_id="png-info-text")
            fields = gr.JSON(label="fields", visible=False)
            send = gr.Button("Send to Generate", variant="primary", elem_id="png-info-send")

    def read(path):
        with user_errors("reading the PNG"):
            return png_info(path)

    upload.change(read, upload, [text, fields], **PRIVATE)
    send.click(
        lambda f: [*settings_updates(f or {}), gr.Tabs(selected="generate")],
        fields,
        [*generate.settings_outputs, tabs],
        **PRIVATE,
        queue=False,
    )
