"""The Gradio interface: Generate, Compare and Train tabs, plus the named ``/generate`` API endpoint.

All the work happens in :mod:`.engine`, :mod:`.compare` and :mod:`.jobs`; the handlers here only turn
widget values into requests and library errors into ``gr.Error`` messages (never tracebacks).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from ..constants import ADAPTER_TYPES
from ..errors import MoSLoraError, RequestError
from .adapter_files import format_info
from .compare import compare, parse_seeds, parse_strengths
from .engine import (
    MAX_ADAPTER_SLOTS,
    MAX_SEED,
    SCHEDULERS,
    STRENGTH_RANGE,
    Engine,
    GenerationRequest,
)
from .jobs import TrainingJobs, TrainRequest

__all__ = ["build_ui", "GENERATE_CONCURRENCY_ID"]

logger = logging.getLogger(__name__)

GENERATE_CONCURRENCY_ID = "device"


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn library errors into ``gr.Error`` messages; log anything unexpected, show a short message."""
    try:
        yield
    except gr.Error:
        raise
    except MoSLoraError as exc:
        raise gr.Error(str(exc)) from None
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise gr.Error(f"{what}: out of device memory; try a smaller size or fewer images") from None
        logger.exception("%s failed", what)
        raise gr.Error(f"{what} failed ({type(exc).__name__}); the server log has the details") from None


def _progress_html(done: int, total: int, text: str) -> str:
    pct = 0 if total <= 0 else min(100, round(100 * done / total))
    return (
        f'<div id="train-progress"><progress value="{done}" max="{max(total, 1)}" style="width:100%"></progress>'
        f"<div>{html.escape(text)} ({pct}%)</div></div>"
    )


def _enlarge(image: Any, side: int = 256) -> Any:
    """Pixel-exact enlargement of small previews (toy models draw 32 px images)."""
    w, h = image.size
    k = side // max(w, h)
    return image.resize((w * k, h * k), 0) if k > 1 else image  # 0 = nearest neighbour


def build_ui(engine: Engine, jobs: TrainingJobs | None = None, title: str = "MoSLoRA diffusion") -> gr.Blocks:
    """Build the Blocks app for ``engine`` (and the Train tab when ``jobs`` is given)."""
    lim = engine.limits
    d = engine.defaults
    schedulers = list(SCHEDULERS)

    def adapter_choices() -> list[str]:
        return engine.list_adapters()

    # ---- handlers -----------------------------------------------------------------------------------

    def run_generate(req: GenerationRequest, progress: Any = None) -> list[Any]:
        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(done / total, desc=f"step {done}/{total}")

        with user_errors("generation"):
            return engine.generate(req, report)

    def ui_generate(
        prompt, negative, steps, cfg, random_seed, seed, scheduler, width, height, n,
        e1, a1, s1, e2, a2, s2, e3, a3, s3, e4, a4, s4,
        progress=gr.Progress(),
    ):  # fmt: skip
        slots = [(e1, a1, s1), (e2, a2, s2), (e3, a3, s3), (e4, a4, s4)]
        adapters = [(a, s) for e, a, s in slots if e and a]
        with user_errors("generation"):
            req = GenerationRequest(
                prompt=prompt,
                negative_prompt=negative,
                steps=steps,
                guidance_scale=cfg,
                seed=-1 if random_seed else (seed if seed is not None else -1),
                width=width,
                height=height,
                scheduler=scheduler,
                num_images=n,
                adapters=adapters,
            )
        results = run_generate(req, progress)
        gallery = [(str(r.path), f"seed {r.seed}") for r in results]
        return gallery, [str(r.path) for r in results], results[0].parameters, results[0].seed

    def api_generate(
        prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter, adapter_scale,
        num_images,
    ):  # fmt: skip
        """Generate PNG images (with an A1111 `parameters` chunk); `adapter` is a file name in the adapters folder."""
        adapters = [(adapter, adapter_scale)] if adapter else []
        req = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed if seed is not None else -1,
            width=width,
            height=height,
            scheduler=scheduler,
            num_images=num_images if num_images is not None else 1,
            adapters=adapters,
        )
        return [str(r.path) for r in run_generate(req)]

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
            result = compare(
                engine,
                req,
                adapter,
                parse_strengths(strengths),
                parse_seeds(seeds),
                lambda done, total: progress(done / total, desc=f"step {done}/{total}"),
            )
        return str(result.path), str(result.path), result.parameters

    def show_info(name):
        if not name:
            return ""
        try:
            return format_info(engine.adapter_info(name))
        except MoSLoraError as exc:
            gr.Warning(str(exc))
            return f"**refused:** {html.escape(str(exc))}"

    def refresh(*values):
        choices = adapter_choices()
        return [gr.update(choices=choices, value=v if v in choices else None) for v in values]

    # ---- layout -------------------------------------------------------------------------------------

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"## {html.escape(title)}\nBase model: `{html.escape(engine.base_name)}` ({engine.architecture}) · "
            f"adapters folder: `{html.escape(str(engine.adapters_dir))}`"
        )
        busy_note = gr.Markdown("", elem_id="busy-note")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                        negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
                        with gr.Row():
                            steps = gr.Slider(
                                1, lim.max_steps, value=d["steps"], step=1, label="Steps", elem_id="steps"
                            )
                            cfg = gr.Slider(
                                0, lim.max_guidance, value=d["guidance_scale"], step=0.5, label="CFG scale"
                            )
                            scheduler = gr.Dropdown(schedulers, value=d["scheduler"], label="Sampler")
                        with gr.Row():
                            width = gr.Slider(
                                lim.min_size, lim.max_size, value=d["width"], step=8, label="Width"
                            )
                            height = gr.Slider(
                                lim.min_size, lim.max_size, value=d["height"], step=8, label="Height"
                            )
                            n_images = gr.Slider(1, lim.max_images, value=1, step=1, label="Images")
                        with gr.Row():
                            random_seed = gr.Checkbox(value=True, label="Random seed")
                            seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
                        with gr.Accordion("Adapters", open=True):
                            slot_widgets = []
                            choices = adapter_choices()
                            for i in range(MAX_ADAPTER_SLOTS):
                                with gr.Row(equal_height=True):
                                    enable = gr.Checkbox(
                                        value=False,
                                        label=f"Slot {i + 1}",
                                        scale=0,
                                        min_width=90,
                                        elem_id=f"enable-{i + 1}",
                                    )
                                    name = gr.Dropdown(
                                        choices,
                                        value=None,
                                        label="Adapter",
                                        allow_custom_value=True,
                                        scale=3,
                                        elem_id=f"adapter-{i + 1}",
                                    )
                                    strength = gr.Slider(
                                        *STRENGTH_RANGE, value=1.0, step=0.05, label="Strength", scale=2
                                    )
                                info = gr.Markdown("", elem_id=f"adapter-info-{i + 1}")
                                name.change(show_info, name, info, api_visibility="private", queue=False)
                                name.change(
                                    lambda v: gr.update(value=bool(v)),
                                    name,
                                    enable,
                                    api_visibility="private",
                                    queue=False,
                                )
                                slot_widgets.append((enable, name, strength))
                            refresh_btn = gr.Button("Refresh adapter list", size="sm")
                    with gr.Column(scale=2):
                        generate_btn = gr.Button(
                            "Generate", variant="primary", size="lg", elem_id="generate-btn"
                        )
                        gallery = gr.Gallery(
                            label="Images",
                            format="png",
                            columns=2,
                            height="auto",
                            elem_id="gallery",
                            type="filepath",
                        )
                        files = gr.File(label="Download PNG files", file_count="multiple", interactive=False)
                        used_seed = gr.Number(label="Seed used (first image)", precision=0, interactive=False)
                        params_box = gr.Textbox(
                            label="Parameters (PNG 'parameters' chunk)", lines=4, interactive=False
                        )
            with gr.Tab("Compare", id="compare"):
                gr.Markdown(
                    "One adapter at several strengths × several seeds, always with the no-adapter baseline. "
                    "Steps, CFG, sampler and size come from the Generate tab."
                )
                with gr.Row():
                    with gr.Column():
                        c_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="compare-prompt")
                        c_negative = gr.Textbox(label="Negative prompt")
                        c_adapter = gr.Dropdown(
                            choices,
                            value=None,
                            label="Adapter",
                            allow_custom_value=True,
                            elem_id="compare-adapter",
                        )
                        c_info = gr.Markdown("")
                        c_strengths = gr.Textbox(value="0.5, 1.0", label="Strengths (comma separated, -2..2)")
                        c_seeds = gr.Textbox(value="1, 2", label="Seeds (comma separated)")
                        compare_btn = gr.Button("Render grid", variant="primary", elem_id="compare-btn")
                    with gr.Column():
                        grid = gr.Image(
                            label="Grid",
                            type="filepath",
                            format="png",
                            interactive=False,
                            elem_id="compare-grid",
                        )
                        grid_file = gr.File(label="Download grid PNG", interactive=False)
                        grid_params = gr.Textbox(label="Parameters", lines=3, interactive=False)
                c_adapter.change(show_info, c_adapter, c_info, api_visibility="private", queue=False)
            train_widgets = None
            if jobs is not None:
                with gr.Tab("Train", id="train"):
                    gr.Markdown(
                        "DreamBooth a new adapter on the base model. The finished adapter is copied into the "
                        "adapters folder and can be picked at once. One job at a time."
                    )
                    with gr.Row():
                        with gr.Column():
                            t_images = gr.File(
                                label=f"Subject images ({jobs.limits.min_images}-{jobs.limits.max_images})",
                                file_count="multiple",
                                file_types=["image"],
                                type="filepath",
                                elem_id="train-images",
                            )
                            t_prompt = gr.Textbox(
                                label="Instance prompt",
                                placeholder="a photo of sks toy",
                                elem_id="train-prompt",
                            )
                            t_class = gr.Textbox(
                                label="Class prompt (optional: turns on prior preservation)",
                                placeholder="a photo of a toy",
                            )
                            t_name = gr.Textbox(
                                label="Adapter name", value="my-adapter", elem_id="train-name"
                            )
                            with gr.Row():
                                t_steps = gr.Number(
                                    value=200,
                                    precision=0,
                                    label="Steps",
                                    minimum=1,
                                    maximum=jobs.limits.max_steps,
                                )
                                t_rank = gr.Number(
                                    value=4,
                                    precision=0,
                                    label="Rank",
                                    minimum=1,
                                    maximum=jobs.limits.max_rank,
                                )
                                t_lr = gr.Number(value=1e-4, label="Learning rate", minimum=0)
                            t_type = gr.Radio(list(ADAPTER_TYPES), value="moslora", label="Adapter type")
                            with gr.Accordion("More", open=False):
                                t_seed = gr.Number(
                                    value=0, precision=0, label="Seed", minimum=0, maximum=MAX_SEED
                                )
                                t_nclass = gr.Number(
                                    value=20, precision=0, label="Class images", minimum=1, maximum=500
                                )
                            with gr.Row():
                                t_start = gr.Button(
                                    "Start training", variant="primary", elem_id="train-start"
                                )
                                t_cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
                        with gr.Column():
                            t_progress = gr.HTML(_progress_html(0, 0, "idle"))
                            t_message = gr.Markdown("", elem_id="train-message")
                            t_loss = gr.LinePlot(x="step", y="loss", title="Training loss", height=220)
                            t_preview = gr.Image(
                                label="Latest preview",
                                type="pil",
                                format="png",
                                interactive=False,
                                elem_id="train-preview",
                            )
                    train_widgets = (t_progress, t_message, t_loss, t_preview)
        seen_finished = gr.State(0)
        timer = gr.Timer(1.0)

        # hidden widgets behind the scripting endpoint /generate
        with gr.Column(visible=False):
            api_inputs = [
                gr.Textbox(label="prompt"),
                gr.Textbox(value="", label="negative_prompt"),
                gr.Number(value=-1, label="seed"),
                gr.Number(value=d["steps"], label="steps"),
                gr.Number(value=d["guidance_scale"], label="guidance_scale"),
                gr.Number(value=d["width"], label="width"),
                gr.Number(value=d["height"], label="height"),
                gr.Textbox(value=d["scheduler"], label="scheduler"),
                gr.Textbox(value="", label="adapter"),
                gr.Number(value=1.0, label="adapter_scale"),
                gr.Number(value=1, label="num_images"),
            ]
            api_output = gr.File(file_count="multiple", label="images")
            api_button = gr.Button("api")

        # ---- events ---------------------------------------------------------------------------------
        sampler_inputs = [steps, cfg, scheduler, width, height]
        slot_inputs = [w for slot in slot_widgets for w in slot]
        generate_btn.click(
            ui_generate,
            [
                prompt,
                negative,
                steps,
                cfg,
                random_seed,
                seed,
                scheduler,
                width,
                height,
                n_images,
                *slot_inputs,
            ],
            [gallery, files, params_box, used_seed],
            api_visibility="private",
            concurrency_id=GENERATE_CONCURRENCY_ID,
            concurrency_limit=1,
        )
        api_button.click(
            api_generate,
            api_inputs,
            api_output,
            api_name="generate",
            concurrency_id=GENERATE_CONCURRENCY_ID,
            concurrency_limit=1,
        )
        compare_btn.click(
            ui_compare,
            [c_prompt, c_negative, c_adapter, c_strengths, c_seeds, *sampler_inputs],
            [grid, grid_file, grid_params],
            api_visibility="private",
            concurrency_id=GENERATE_CONCURRENCY_ID,
            concurrency_limit=1,
        )
        dropdowns = [name for _, name, _ in slot_widgets] + [c_adapter]
        refresh_btn.click(refresh, dropdowns, dropdowns, api_visibility="private", queue=False)

        def tick(seen, *values):
            """Poll the training job: progress, loss, preview; refresh adapter lists once a job ends."""
            st = jobs.status() if jobs is not None else None
            if st is None or st.state == "idle":
                outs = [gr.skip()] * (4 if train_widgets else 0)
                return [gr.skip(), seen, *outs, *[gr.skip()] * len(values)]
            note = (
                f"Training job running: step {st.step}/{st.max_steps}. Generation stays available but shares "
                "the device, so it is slower."
                if st.active
                else ""
            )
            text = f"{st.state}: step {st.step}/{st.max_steps}"
            if st.losses:
                text += f", loss {st.losses[-1][1]:.4f}"
            import pandas as pd

            loss_df = pd.DataFrame(
                {
                    "step": pd.Series([s for s, _ in st.losses], dtype="int64"),
                    "loss": pd.Series([v for _, v in st.losses], dtype="float64"),
                }
            )
            outs = [
                _progress_html(st.step, st.max_steps, text),
                html.escape(st.message),
                loss_df,
                _enlarge(st.preview) if st.preview is not None else gr.skip(),
            ]
            if st.finished != seen:
                choices = adapter_choices()
                drops = [gr.update(choices=choices, value=v if v in choices else None) for v in values]
            else:
                drops = [gr.skip()] * len(values)
            return [note, st.finished, *outs, *drops]

        tick_outputs = [busy_note, seen_finished, *(train_widgets or []), *dropdowns]
        timer.tick(tick, [seen_finished, *dropdowns], tick_outputs, api_visibility="private", queue=False)

        if jobs is not None:

            def ui_train(
                images, instance_prompt, class_prompt, n_steps, rank, lr, kind, name, t_seed_v, n_class
            ):
                with user_errors("training"):
                    files_in = [
                        f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (images or [])
                    ]
                    st = jobs.start(
                        TrainRequest(
                            images=files_in,
                            instance_prompt=instance_prompt,
                            adapter_name=name,
                            class_prompt=class_prompt,
                            steps=n_steps,
                            rank=rank,
                            learning_rate=lr,
                            adapter=kind,
                            seed=t_seed_v or 0,
                            num_class_images=n_class or 20,
                        )
                    )
                return st.message

            def ui_cancel():
                return jobs.cancel().message or "no training job is running"

            t_start.click(
                ui_train,
                [t_images, t_prompt, t_class, t_steps, t_rank, t_lr, t_type, t_name, t_seed, t_nclass],
                t_message,
                api_visibility="private",
                concurrency_id="train",
                concurrency_limit=1,
            )
            t_cancel.click(ui_cancel, None, t_message, api_visibility="private", queue=False)
    return demo
