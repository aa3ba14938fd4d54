"""The Compare tab: a grid of adapter strength x seed."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..errors import RequestError, StoppedError
from .compare import compare, parse_seeds, parse_strengths
from .engine import Engine
from .requests import GenerationRequest
from .widgets import DEVICE, PRIVATE, adapter_info_markdown, step_reporter, user_errors

logger = logging.getLogger(__name__)


def build_compare_tab(engine: Engine, sampler_inputs: list[Any]) -> tuple[Any, Any]:
    """One adapter at several strengths x seeds with the baseline; returns its adapter dropdown and refresh."""
    gr.Markdown(
        "One adapter at several strengths × several seeds, always with the no-adapter baseline. "
        "Steps, CFG, sampler and size come from the Generate tab."
    )
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
            negative = gr.Textbox(label="Negative prompt")
            adapter = gr.Dropdown(
                engine.list_adapters(),
                value=None,
                label="Adapter",
                allow_custom_value=True,
                elem_id="compare-adapter",
            )
            info = gr.Markdown("", elem_id="compare-adapter-info")
            refresh = gr.Button("Refresh adapter list", size="sm", elem_id="compare-refresh")
            strengths = gr.Textbox(value="0.5, 1.0", label="Strengths (comma separated, -2..2)")
            seeds = gr.Textbox(value="1, 2", label="Seeds (comma separated)")
            with gr.Row():
                compare_btn = gr.Button("Render grid", variant="primary", elem_id="compare-btn", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="compare-stop-btn", scale=1)
        with gr.Column():
            grid = gr.Image(
                label="Grid", type="filepath", format="png", interactive=False, elem_id="compare-grid"
            )
            grid_file = gr.File(label="Download grid PNG", interactive=False)
            grid_params = gr.Textbox(label="Parameters", lines=3, interactive=False)

    def ui_compare(prompt, negative, adapter, strengths, seeds, steps, cfg, scheduler, width, height,
                   progress=gr.Progress()):  # fmt: skip
        with user_errors("comparison"):
            if not adapter:
                raise RequestError("pick an adapter to compare")
            req = GenerationRequest(
                prompt=prompt,
                negative_prompt=negative,
                steps=steps,
                guidance_scale=cfg,
                width=width,
                height=height,
                scheduler=scheduler,
            )
            try:
                result = compare(
                    engine,
                    req,
                    adapter,
                    parse_strengths(strengths),
                    parse_seeds(seeds),
                    step_reporter(progress),
                )
            except StoppedError:  # Stop before the first image: nothing to show, and not a failure
                gr.Info("stopped before the first image was finished")
                return gr.skip(), gr.skip(), gr.skip()
        if result.stopped:
            gr.Info(f"{result.stopped}; the grid keeps them (grey: not rendered)")
        return str(result.path), str(result.path), result.parameters

    compare_btn.click(
        ui_compare,
        [prompt, negative, adapter, strengths, seeds, *sampler_inputs],
        [grid, grid_file, grid_params],
        **PRIVATE,
        **DEVICE,
    )
    adapter.change(lambda v: adapter_info_markdown(engine, v), adapter, info, **PRIVATE, queue=False)
    stop_btn.click(engine.stop, None, None, **PRIVATE, queue=False)
    return adapter, refresh
