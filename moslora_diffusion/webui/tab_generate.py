"""The Generate tab: prompt, adapters, sampler settings, images and their PNG info."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..errors import StoppedError
from .engine import Engine
from .pngmeta import generation_settings
from .requests import MAX_ADAPTER_SLOTS, MAX_SEED, SCHEDULERS, STRENGTH_RANGE, GenerationRequest
from .widgets import (
    DEVICE,
    PRIVATE,
    REFUSED,
    adapter_info_markdown,
    bounded_number,
    size_bounds,
    size_note,
    start_image,
    step_reporter,
    streamed,
    token_count,
    user_errors,
)

logger = logging.getLogger(__name__)

PREVIEW_EVERY_S = 0.25  # the live preview is sent at most this often


@dataclass
class GenerateTab:
    prompt: Any
    negative: Any
    random_seed: Any
    seed: Any
    steps: Any
    cfg: Any
    scheduler: Any
    width: Any
    height: Any
    slots: list[tuple[Any, Any, Any]]  # (enable, adapter name, strength)
    infos: list[Any]  # each slot's description / refusal
    refresh: Any
    counters: tuple[Any, Any] = ()  # the token counters under prompt and negative prompt

    @property
    def sampler_inputs(self) -> list[Any]:
        return [self.steps, self.cfg, self.scheduler, self.width, self.height]

    @property
    def dropdowns(self) -> list[Any]:
        return [name for _, name, _ in self.slots]

    @property
    def settings_outputs(self) -> list[Any]:
        """The widgets `settings_updates` fills, in its order."""
        fixed = [
            self.prompt,
            self.negative,
            self.random_seed,
            self.seed,
            self.steps,
            self.cfg,
            self.scheduler,
        ]
        return [*fixed, self.width, self.height, *[w for slot in self.slots for w in slot]]


def run_generation(engine: Engine, req: GenerationRequest, progress: Any = None) -> list[Any]:
    with user_errors("generation"):
        return engine.generate(req, step_reporter(progress))


def stream_generation(engine: Engine, req: GenerationRequest, progress: Any):
    """Yield the Generate tab's outputs (gallery, files, parameters, seed, preview) as the images come."""
    keep = gr.skip()
    results: list[Any] = []
    shown_at = 0.0

    def work(emit):
        return engine.generate(req, lambda done, total: emit("step", done, total), on_image=lambda r: emit("image", r),
                               on_preview=lambda i, image: emit("preview", i, image))  # fmt: skip

    def outputs(preview: Any) -> tuple:
        if not results:
            return keep, keep, keep, keep, preview
        items = [(str(r.path), f"seed {r.seed}") for r in results]
        return items, [str(r.path) for r in results], results[0].parameters, str(results[0].seed), preview

    try:
        count = max(1, int(float(req.num_images)))
    except (TypeError, ValueError):  # the engine refuses it by name before any event
        count = 1
    try:
        for event in streamed(work, engine.stop):
            kind = event[0]
            if kind == "step":
                done, total = event[1], event[2]
                per_image = max(1, total // max(1, count))
                image = min(count, (done - 1) // per_image + 1)
                step = done - (image - 1) * per_image
                if progress is not None:
                    progress(done / total, desc=f"image {image} of {count} · step {step} of {per_image}")
            elif kind == "preview" and time.monotonic() - shown_at > PREVIEW_EVERY_S:
                shown_at = time.monotonic()
                yield outputs(
                    gr.update(value=event[2], visible=True, label=f"Image {event[1] + 1}: denoising")
                )
            elif kind == "image":
                results.append(event[1])
                yield outputs(keep)
            elif kind == "done":
                results[:] = event[1]
    except StoppedError:  # Stop before the first image: nothing to show, and not a failure
        gr.Info("stopped before the first image was finished")
        yield outputs(gr.update(value=None, visible=False))
        return
    if len(results) < count:
        gr.Info(f"stopped after {len(results)} of {count} images; they are kept")
    used, limit = engine.prompt_tokens(req.prompt)
    if used > limit:
        gr.Warning(f"the prompt has {used} tokens; the text encoder read only the first {limit}")
    yield outputs(gr.update(value=None, visible=False))


def _adapter_slot(engine: Engine, i: int, choices: list[str]) -> tuple[Any, Any, Any, Any]:
    with gr.Row(equal_height=True):
        enable = gr.Checkbox(
            value=False, label=f"Slot {i + 1}", scale=0, min_width=90, elem_id=f"enable-{i + 1}"
        )
        name = gr.Dropdown(
            choices, value=None, label="Adapter", allow_custom_value=True, scale=3, elem_id=f"adapter-{i + 1}"
        )
        strength = gr.Slider(*STRENGTH_RANGE, value=1.0, step=0.05, label="Strength", scale=2)
    info = gr.Markdown("", elem_id=f"adapter-info-{i + 1}")

    def picked(value: str | None) -> tuple[str, Any]:
        """The adapter's description, and the slot ticked; a refused adapter unticks it, with the reason."""
        text = adapter_info_markdown(engine, value)
        return text, gr.update(value=bool(value) and not text.startswith(REFUSED))

    name.change(picked, name, [info, enable], **PRIVATE, queue=False)
    return enable, name, strength, info


def _settings_column(engine: Engine) -> dict[str, Any]:
    """Prompt and negative prompt with token counters, sampler and size, seed, img2img and adapter slots."""
    lim, d = engine.limits, engine.defaults
    w: dict[str, Any] = {}
    w["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
    w["tokens"] = gr.Markdown(token_count(engine, ""), elem_id="prompt-tokens")
    w["negative"] = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
    w["negative_tokens"] = gr.Markdown(token_count(engine, ""), elem_id="negative-tokens")
    # number boxes, not sliders: a slider clamped a typed 0 or 10000 silently while still showing it; these
    # pass what was typed to the request check, which refuses a value outside the shown range by name
    with gr.Row():
        w["steps"] = bounded_number(d["steps"], "Steps", 1, lim.max_steps, "steps")
        w["cfg"] = bounded_number(
            d["guidance_scale"], "CFG scale", 0, lim.max_guidance, "cfg", precision=None
        )
        w["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=d["scheduler"], label="Sampler")
    low, _, high = size_bounds(engine)
    with gr.Row():
        w["width"] = bounded_number(d["width"], "Width", low, high, "width")
        w["height"] = bounded_number(d["height"], "Height", low, high, "height")
        w["n_images"] = bounded_number(1, "Images", 1, lim.max_images, "n-images")
    w["size_note"] = gr.Markdown("", elem_id="size-note")
    with gr.Row():
        w["random_seed"] = gr.Checkbox(value=True, label="Random seed")
        w["seed"] = gr.Number(
            value=0, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)", elem_id="seed"
        )
    with gr.Accordion("img2img: start from an image", open=False):
        w["init_image"] = start_image(
            label="Start image (resized to width x height)", sources=["upload", "clipboard"],
            elem_id="img2img-input",
        )  # fmt: skip
        w["denoise"] = gr.Slider(
            0.05, 1.0, value=0.75, step=0.05, label="Denoising strength (0 keeps the image, 1 replaces it)",
            elem_id="img2img-strength",
        )  # fmt: skip
    with gr.Accordion("Adapters", open=True):
        choices = engine.list_adapters()
        slot_parts = [_adapter_slot(engine, i, choices) for i in range(MAX_ADAPTER_SLOTS)]
        w["slots"], w["infos"] = [part[:3] for part in slot_parts], [part[3] for part in slot_parts]
        w["refresh"] = gr.Button("Refresh adapter list", size="sm")
    return w


def _results_column() -> dict[str, Any]:
    """Generate / Stop, the gallery, the PNG files, the seed used and the parameters text."""
    w: dict[str, Any] = {}
    with gr.Row():
        w["generate"] = gr.Button(
            "Generate (Ctrl+Enter)", variant="primary", size="lg", elem_id="generate-btn", scale=3
        )
        w["stop"] = gr.Button("Stop", variant="stop", size="lg", elem_id="stop-btn", scale=1)
    w["gallery"] = gr.Gallery(
        label="Images",
        format="png",
        columns=2,
        height="auto",
        elem_id="gallery",
        type="filepath",
        object_fit="contain",  # a wide or tall image is shown whole, never cropped to a square
    )
    # the image being denoised, from its latents (cheap: no VAE decode); shown only while generating
    w["preview"] = gr.Image(label="Denoising", type="pil", format="png", interactive=False, visible=False,
                            elem_id="live-preview", height=256)  # fmt: skip
    w["files"] = gr.File(
        label="Download PNG files", file_count="multiple", interactive=False, elem_id="downloads"
    )
    with gr.Row(equal_height=True):
        # a read-only text box: a Number would show 0 before any image exists
        w["used_seed"] = gr.Textbox(
            value="", label="Seed used (first image)", interactive=False, elem_id="used-seed", scale=3
        )
        w["reuse_seed"] = gr.Button("Reuse seed", size="sm", elem_id="reuse-seed", scale=1)
    w["params"] = gr.Textbox(label="Parameters (PNG 'parameters' chunk)", lines=4, interactive=False)
    return w


_REQUEST_INPUTS = ("prompt", "negative", "steps", "cfg", "random_seed", "seed", "scheduler", "width", "height",
                   "n_images", "init_image", "denoise")  # fmt: skip


def build_generate_tab(engine: Engine) -> GenerateTab:
    """Prompt, sampler settings, four adapter slots; the gallery with parameters and the seed used."""
    with gr.Row():
        with gr.Column(scale=3):
            w = _settings_column(engine)
        with gr.Column(scale=2):
            out = _results_column()

    def ui_generate(prompt, negative, steps, cfg, random_seed, seed, scheduler, width, height, n, init, strength,
                    *slot_values, progress=gr.Progress()):  # fmt: skip
        """Images appear as each one finishes, with a live preview of the one being denoised."""
        triples = [slot_values[i : i + 3] for i in range(0, len(slot_values), 3)]
        with user_errors("generation"):
            req = GenerationRequest(
                prompt=prompt, negative_prompt=negative, steps=steps, guidance_scale=cfg,
                seed=-1 if random_seed else (seed if seed is not None else -1), width=width, height=height,
                scheduler=scheduler, num_images=n, adapters=[(a, s) for e, a, s in triples if e and a],
                init_image=init, strength=strength,
            )  # fmt: skip
            yield from stream_generation(engine, req, progress)

    for slider in (w["width"], w["height"]):
        slider.change(lambda wd, ht: size_note(engine, wd, ht), [w["width"], w["height"]], w["size_note"],
                      **PRIVATE, queue=False)  # fmt: skip
    for box, counter in ((w["prompt"], w["tokens"]), (w["negative"], w["negative_tokens"])):
        box.change(lambda text: token_count(engine, text), box, counter, **PRIVATE, queue=False)
    out["stop"].click(
        engine.stop, None, None, **PRIVATE, queue=False
    )  # outside the queue the generation holds
    out["generate"].click(
        ui_generate,
        [w[k] for k in _REQUEST_INPUTS] + [x for slot in w["slots"] for x in slot],
        [out["gallery"], out["files"], out["params"], out["used_seed"], out["preview"]],
        **PRIVATE,
        **DEVICE,
    )
    out["reuse_seed"].click(
        lambda used: (gr.update(value=False), int(used)) if str(used).isdigit() else (gr.skip(), gr.skip()),
        out["used_seed"], [w["random_seed"], w["seed"]], **PRIVATE, queue=False,
    )  # fmt: skip
    return GenerateTab(w["prompt"], w["negative"], w["random_seed"], w["seed"], w["steps"], w["cfg"],
                       w["scheduler"], w["width"], w["height"], w["slots"], w["infos"], w["refresh"],
                       (w["tokens"], w["negative_tokens"]))  # fmt: skip


def settings_updates(fields: dict[str, Any]) -> list[Any]:
    """Updates for `GenerateTab.settings_outputs` from a parsed infotext; fields it lacks stay as they are."""
    s = generation_settings(fields)
    keep = gr.skip()
    sampler = s.get("sampler") if s.get("sampler") in SCHEDULERS else None
    updates = [
        s["prompt"],
        s["negative_prompt"],
        gr.update(value=False) if "seed" in s else keep,
        s.get("seed", keep),
        s.get("steps", keep),
        s.get("guidance_scale", keep),
        sampler or keep,
        s.get("width", keep),
        s.get("height", keep),
    ]
    adapters = s.get("adapters", [])[:MAX_ADAPTER_SLOTS]
    for i in range(MAX_ADAPTER_SLOTS):
        name, strength = adapters[i] if i < len(adapters) else (None, 1.0)
        updates += [bool(name), name, strength]
    return updates
