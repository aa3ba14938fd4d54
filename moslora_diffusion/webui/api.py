"""The named scripting endpoints (``/generate``, ``/img2img``, ``/png_info``, ``/adapters``) for gradio_client,
and the plain ``GET /api/adapters`` JSON route (behind the same login as the page)."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from .engine import Engine
from .requests import SCHEDULERS, GenerationRequest
from .tab_generate import run_generation
from .widgets import DEVICE, png_info, start_image

logger = logging.getLogger(__name__)


def _api_adapters(adapter: str | None, adapter_scale: float | None, adapters: Any) -> list[tuple[str, float]]:
    """The single ``adapter`` / ``adapter_scale`` form plus the ``adapters`` list ([[name, strength], ...])."""
    out = [(adapter, 1.0 if adapter_scale is None else adapter_scale)] if adapter else []
    if adapters in (None, "", []):
        return out
    if not isinstance(adapters, list) or not all(
        isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) for item in adapters
    ):
        raise gr.Error("adapters must be a list of [file name, strength] pairs", print_exception=False)
    return out + [(name, strength) for name, strength in adapters]


ADAPTERS_ROUTE = "/api/adapters"


def adapter_list(engine: Engine) -> list[dict[str, Any]]:
    """The adapters folder as the API shows it: :meth:`Engine.adapter_catalog` without server paths."""
    out = []
    for entry in engine.adapter_catalog():
        entry = dict(entry)
        entry["preview"] = entry.get("preview") is not None  # whether a sample image exists, not where
        out.append(entry)
    return out


def add_get_routes(demo: gr.Blocks, engine: Engine) -> None:
    """``GET /api/adapters``: the adapter list as JSON, for curl and scripts that do not speak Gradio's
    protocol. It sits behind the page's own login check (the one Gradio's ``/config`` route uses)."""
    from fastapi.responses import JSONResponse

    app = demo.app
    guard = next(
        (route.dependencies for route in app.routes if getattr(route, "path", None) == "/config"), None
    )
    if guard is None:  # never serve the list without the login check
        raise RuntimeError("Gradio's /config route was not found: cannot guard GET /api/adapters")
    app.add_api_route(
        ADAPTERS_ROUTE, lambda: JSONResponse(adapter_list(engine)), methods=["GET"], dependencies=guard
    )


def build_api_endpoint(engine: Engine) -> None:
    """Hidden widgets behind the named ``/generate`` and ``/png_info`` endpoints (gradio_client, scripts)."""
    d = engine.defaults
    with gr.Column(visible=False):
        inputs = [
            gr.Textbox(label="prompt"),
            gr.Textbox(value="", label="negative_prompt"),
            gr.Number(value=-1, label="seed"),
            gr.Number(value=d["steps"], label="steps"),
            gr.Number(value=d["guidance_scale"], label="guidance_scale"),
            gr.Number(value=d["width"], label="width"),
            gr.Number(value=d["height"], label="height"),
            # any text: an unknown sampler gets our one-line refusal, not Gradio's choice check and a traceback
            gr.Dropdown(list(SCHEDULERS), value=d["scheduler"], label="scheduler", allow_custom_value=True),
            gr.Textbox(value="", label="adapter"),
            gr.Number(value=1.0, label="adapter_scale"),
            gr.Number(value=1, label="num_images"),
            gr.JSON(value=[], label="adapters"),
        ]
        output = gr.File(file_count="multiple", label="images")
        button = gr.Button("api")
        img_in = [start_image(label="image"), gr.Number(value=0.75, label="strength")]
        png_in = gr.File(type="filepath", label="image")
        png_out = [gr.Textbox(label="parameters"), gr.JSON(label="fields")]
        png_button = gr.Button("png_info")

    def request(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                adapter_scale, num_images, adapters, **extra) -> GenerationRequest:  # fmt: skip
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed if seed is not None else -1,
            width=width,
            height=height,
            scheduler=scheduler,
            num_images=num_images if num_images is not None else 1,
            adapters=_api_adapters(adapter, adapter_scale, adapters),
            **extra,
        )

    def api_generate(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                     adapter_scale, num_images, adapters):  # fmt: skip
        """Generate PNG images (with an A1111 `parameters` chunk). Adapters are file names in the adapters folder:
        `adapter` + `adapter_scale` for one, `adapters` = [[name, strength], ...] for several (both may be given)."""
        req = request(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                      adapter_scale, num_images, adapters)  # fmt: skip
        return [str(r.path) for r in run_generation(engine, req)]

    def api_img2img(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                    adapter_scale, num_images, adapters, image, strength):  # fmt: skip
        """img2img: `image` (resized to width x height) denoised from `strength` (0 keeps it, 1 replaces it)
        with the prompt; the other arguments as for /generate."""
        if image is None:
            raise gr.Error("give an image to start from", print_exception=False)
        req = request(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                      adapter_scale, num_images, adapters, init_image=image,
                      strength=0.75 if strength is None else strength)  # fmt: skip
        return [str(r.path) for r in run_generation(engine, req)]

    def api_png_info(path):
        """The `parameters` text chunk of a PNG (ours or AUTOMATIC1111's) and its fields."""
        return png_info(path)

    def api_adapters() -> list[dict[str, Any]]:
        """The adapters folder: for each file its name, format, architecture, rank, alpha, trigger (training
        prompt), steps, whether it fits the loaded base model (`fits`, else `problem`) and whether it has a
        sample image (`preview`)."""
        return adapter_list(engine)

    gr.api(api_adapters, api_name="adapters", queue=False)
    button.click(api_generate, inputs, output, api_name="generate", **DEVICE)
    img_button = gr.Button("img2img", visible=False)
    img_button.click(api_img2img, [*inputs, *img_in], output, api_name="img2img", **DEVICE)
    png_button.click(api_png_info, png_in, png_out, api_name="png_info")
