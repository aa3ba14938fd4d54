"""The Gradio interface: Generate, X/Y plot, Adapters and Train tabs, plus the named ``/generate`` API endpoint.

All the work happens in :mod:`.engine`, :mod:`.compare` and :mod:`.jobs`; the handlers here only turn
widget values into requests and library errors into ``gr.Error`` messages (never tracebacks). Each tab
has its own builder, which lays out its widgets and wires its own events; :func:`build_ui` puts them
together with the training poller and the scripting endpoint."""

from __future__ import annotations

import html
import logging

import gradio as gr

from .api import build_api_endpoint
from .engine import Engine
from .jobs import TrainingJobs
from .tab_adapters import adapter_cards, build_adapters_tab
from .tab_compare import build_compare_tab
from .tab_generate import GenerateTab, build_generate_tab
from .tab_history import build_history_tab, build_png_info_tab
from .tab_train import build_train_tab, training_poll
from .widgets import (
    DEVICE,
    GENERATE_CONCURRENCY_ID,
    PRIVATE,
    REFUSED,
    adapter_info_markdown,
    bounded_label,
    refreshed,
    size_bounds,
    token_count,
    user_errors,
)

logger = logging.getLogger(__name__)


__all__ = ["build_ui", "GENERATE_CONCURRENCY_ID"]


logger = logging.getLogger(__name__)


_PAGE_JS = """
() => {
  const style = document.createElement("style");
  style.textContent = "#gallery img, #compare-grid img, #train-preview img, #history img, #img2img-input img"
    + " { image-rendering: pixelated; }";
  document.head.appendChild(style);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      const button = document.querySelector("#generate-btn");
      if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); }
    }
  });
}
"""


def _header(engine: Engine, title: str) -> str:
    return (
        f"## {html.escape(title)}\nBase model: `{html.escape(engine.model_name)}` ({engine.architecture}) · "
        f"adapters folder: `{html.escape(str(engine.adapters_dir))}`"
    )


def _switch_model(engine: Engine, jobs: TrainingJobs | None, generate: GenerateTab, title: str):
    """The base-model menu's handler: load the model, then refresh what depends on it."""

    def switch(name, prompt, negative, *slot_names, progress=gr.Progress()):
        progress(0.1, desc=f"loading {name}")
        with user_errors("switching the base model"):
            engine.switch_model(name)
        if jobs is not None:  # the Train tab trains on the model shown
            jobs.base_model, jobs.sampler_defaults = engine.base_model, engine.defaults
        low, native, high = size_bounds(engine)
        sizes = [
            gr.update(label=bounded_label(name, low, high), value=native) for name in ("Width", "Height")
        ]
        sampler = [engine.defaults["steps"], engine.defaults["guidance_scale"], engine.defaults["scheduler"]]
        checks = []
        for value in slot_names:  # adapters picked for the old model are checked against the new one
            text = adapter_info_markdown(engine, value)
            checks += [text, gr.update(value=bool(value) and not text.startswith(REFUSED))]
        counters = [token_count(engine, prompt), token_count(engine, negative)]  # the new model's limit
        return [_header(engine, title), *sizes, *sampler, *counters, *checks]

    outputs = [generate.width, generate.height, generate.steps, generate.cfg, generate.scheduler,
               *generate.counters]  # fmt: skip
    for info, (enable, _, _) in zip(generate.infos, generate.slots):
        outputs += [info, enable]
    return switch, outputs


def build_ui(engine: Engine, jobs: TrainingJobs | None = None, title: str = "MoSLoRA diffusion") -> gr.Blocks:
    """Build the Blocks app for ``engine`` (and the Train tab when ``jobs`` is given)."""
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        header = gr.Markdown(_header(engine, title), elem_id="header")
        model_menu = gr.Dropdown(
            list(engine.models), value=engine.model_name, label="Base model", elem_id="base-model"
        )
        busy_note = gr.Markdown("", elem_id="busy-note")
        train = None
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = build_generate_tab(engine)
            with gr.Tab("X/Y plot", id="compare"):
                compare_adapter, compare_refresh = build_compare_tab(
                    engine, generate.sampler_inputs, [generate.random_seed, generate.seed]
                )
            with gr.Tab("Adapters", id="adapters"):
                cards, card_names = build_adapters_tab(
                    engine, generate.prompt, tabs, [*generate.dropdowns, compare_adapter]
                )
            if jobs is not None:
                with gr.Tab("Train", id="train"):
                    train = build_train_tab(jobs)
            with gr.Tab("History", id="history-tab"):
                _, first_page, history_outputs = build_history_tab(engine, generate, tabs)
            with gr.Tab("PNG info", id="png-info"):
                build_png_info_tab(generate, tabs)
        build_api_endpoint(engine)

        switch, switch_outputs = _switch_model(engine, jobs, generate, title)
        model_menu.change(
            switch,
            [model_menu, generate.prompt, generate.negative, *generate.dropdowns],
            [header, *switch_outputs],
            **PRIVATE,
            **DEVICE,
        )
        dropdowns = [*generate.dropdowns, compare_adapter]
        refresh = (lambda *v: refreshed(engine, v), dropdowns, dropdowns)
        generate.refresh.click(*refresh, **PRIVATE, queue=False)
        compare_refresh.click(*refresh, **PRIVATE, queue=False)
        # Lists are current after a reload, without a click; only the choices change, so a pick the user makes
        # while the page is still loading is kept.
        demo.load(None, None, None, js=_PAGE_JS)  # runs in the browser once the page is up
        demo.load(first_page, None, history_outputs, **PRIVATE, queue=False)
        demo.load(
            lambda: [gr.update(choices=engine.list_adapters())] * len(dropdowns),
            None,
            dropdowns,
            **PRIVATE,
            queue=False,
        )
        demo.load(lambda: adapter_cards(engine), None, [cards, card_names], **PRIVATE, queue=False)
        seen_finished = gr.State(0)
        outputs = [busy_note, seen_finished, *(train.outputs if train else []), *dropdowns]
        gr.Timer(1.0).tick(
            training_poll(engine, jobs, train), [seen_finished, *dropdowns], outputs, **PRIVATE, queue=False
        )
    return demo
