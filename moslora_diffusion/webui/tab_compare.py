"""The X/Y plot tab: one grid over any two of adapter strength, seed, steps, CFG scale, sampler and prompt
search/replace (strength x seed with the no-adapter baseline by default)."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from ..errors import StoppedError
from .compare import AXES, parse_axis, xy_plot
from .engine import Engine
from .requests import STRENGTH_RANGE, GenerationRequest
from .widgets import DEVICE, PRIVATE, adapter_info_markdown, bounded_number, step_reporter, user_errors

logger = logging.getLogger(__name__)

NO_AXIS = "None"
# what each axis takes, shown as the values box's label, and an example put in the box when the axis is picked
AXIS_HINTS = {
    "Strength": ("strengths, -2..2; 0 = no adapter", "0, 0.5, 1"),
    "Seed": ("seeds", "1, 2"),
    "Steps": ("sampler steps", "10, 20, 30"),
    "CFG scale": ("CFG scales", "3, 7, 11"),
    "Sampler": ("sampler names", "DDIM, Euler a, DPM++ 2M"),
    "Prompt S/R": ("the first is searched for in the prompts, each replaces it", ""),
    NO_AXIS: ("no Y axis: one row", ""),
}


def _values_label(axis: str) -> str:
    return f"{axis} values ({AXIS_HINTS[axis][0]}; comma separated)"


def _axis_row(kinds: list[str], kind: str, values: str, name: str) -> tuple[Any, Any]:
    with gr.Row(equal_height=True):
        axis = gr.Dropdown(kinds, value=kind, label=f"{name} axis", scale=1, elem_id=f"{name.lower()}-axis")
        text = gr.Textbox(value=values, label=_values_label(kind), scale=3, elem_id=f"{name.lower()}-values")

    def picked(new_kind: str):
        return gr.update(label=_values_label(new_kind), value=AXIS_HINTS[new_kind][1])

    axis.input(picked, axis, text, **PRIVATE, queue=False)
    return axis, text


def build_compare_tab(engine: Engine, sampler_inputs: list[Any], seed_inputs: list[Any]) -> tuple[Any, Any]:
    """The X/Y plot; returns its adapter dropdown and refresh button."""
    gr.Markdown(
        "One grid over any two settings. The settings no axis sets (steps, CFG, sampler, size, seed) come from "
        "the Generate tab; the adapter below is used at its strength in every cell unless an axis is Strength."
    )
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
            negative = gr.Textbox(label="Negative prompt")
            with gr.Row(equal_height=True):
                adapter = gr.Dropdown(engine.list_adapters(), value=None, label="Adapter (optional)",
                                      allow_custom_value=True, elem_id="compare-adapter", scale=3)  # fmt: skip
                strength = bounded_number(
                    1.0, "Strength", *STRENGTH_RANGE, "compare-strength", precision=None
                )
            info = gr.Markdown("", elem_id="compare-adapter-info")
            refresh = gr.Button("Refresh adapter list", size="sm", elem_id="compare-refresh")
            x_kind, x_values = _axis_row(list(AXES), "Strength", "0, 0.5, 1", "X")
            y_kind, y_values = _axis_row([*AXES, NO_AXIS], "Seed", "1, 2", "Y")
            with gr.Row():
                compare_btn = gr.Button("Render grid", variant="primary", elem_id="compare-btn", scale=3)
                stop_btn = gr.Button("Stop", variant="stop", elem_id="compare-stop-btn", scale=1)
        with gr.Column():
            grid = gr.Image(
                label="Grid", type="filepath", format="png", interactive=False, elem_id="compare-grid"
            )
            grid_file = gr.File(label="Download grid PNG", interactive=False)
            grid_params = gr.Textbox(label="Parameters", lines=3, interactive=False, elem_id="compare-params")

    def ui_compare(prompt, negative, adapter, strength, x_kind, x_values, y_kind, y_values, steps, cfg, scheduler,
                   width, height, random_seed, seed, progress=gr.Progress()):  # fmt: skip
        with user_errors("X/Y plot"):
            req = GenerationRequest(
                prompt=prompt, negative_prompt=negative, steps=steps, guidance_scale=cfg, width=width,
                height=height, scheduler=scheduler, seed=-1 if random_seed or seed is None else seed,
            )  # fmt: skip
            x = parse_axis(x_kind, x_values)
            y = None if y_kind == NO_AXIS else parse_axis(y_kind, y_values)
            try:
                result = xy_plot(engine, req, x, y, adapter or None, strength if strength is not None else 1.0,
                                 step_reporter(progress))  # fmt: skip
            except StoppedError:  # Stop before the first image: nothing to show, and not a failure
                gr.Info("stopped before the first image was finished")
                return gr.skip(), gr.skip(), gr.skip()
        if result.stopped:
            gr.Info(f"{result.stopped}; the grid keeps them (grey: not rendered)")
        return str(result.path), str(result.path), result.parameters

    compare_btn.click(
        ui_compare,
        [
            prompt,
            negative,
            adapter,
            strength,
            x_kind,
            x_values,
            y_kind,
            y_values,
            *sampler_inputs,
            *seed_inputs,
        ],
        [grid, grid_file, grid_params],
        **PRIVATE,
        **DEVICE,
    )
    adapter.change(lambda v: adapter_info_markdown(engine, v), adapter, info, **PRIVATE, queue=False)
    stop_btn.click(engine.stop, None, None, **PRIVATE, queue=False)
    return adapter, refresh
