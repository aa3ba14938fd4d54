"""The Gradio interface: Generate, Compare and Train tabs, plus the named ``/generate`` API endpoint.

All the work happens in :mod:`.engine`, :mod:`.compare` and :mod:`.jobs`; the handlers here only turn
widget values into requests and library errors into ``gr.Error`` messages (never tracebacks). Each tab
has its own builder, which lays out its widgets and wires its own events; :func:`build_ui` puts them
together with the training poller and the scripting endpoint.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from .pngmeta import generation_settings, parse_parameters, read_parameters

__all__ = ["build_ui", "GENERATE_CONCURRENCY_ID"]

logger = logging.getLogger(__name__)

GENERATE_CONCURRENCY_ID = "device"
_DEVICE = {"concurrency_id": GENERATE_CONCURRENCY_ID, "concurrency_limit": 1}
_PRIVATE = {"api_visibility": "private"}
REFUSED = "**refused:**"


@contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Turn library errors into ``gr.Error`` messages; log anything unexpected, show a short message."""
    try:
        yield
    except gr.Error:
        raise
    except MoSLoraError as exc:  # the user's mistake: a message on the page, no traceback in the server log
        raise gr.Error(str(exc), print_exception=False) from None
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


def _step_reporter(progress: Any):
    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, desc=f"step {done}/{total}")

    return report


def _adapter_info_markdown(engine: Engine, name: str | None) -> str:
    """The adapter's description for the page, or the reason it is refused."""
    if not name:
        return ""
    try:
        return format_info(engine.adapter_info(name))
    except MoSLoraError as exc:  # shown inline (a toast cannot reach the page from this unqueued event)
        return f"{REFUSED} {html.escape(str(exc))}"


def _token_count(engine: Engine, text: str | None) -> str:
    """The live counter under a prompt: tokens against the text encoder's limit, and a warning beyond it."""
    used, limit = engine.prompt_tokens(text or "")
    if used > limit:
        return (
            f"**{used} / {limit} tokens: the text encoder reads only the first {limit}; the rest is cut off**"
        )
    return f"{used} / {limit} tokens"


def _png_info(path: str | None) -> tuple[str, dict[str, Any]]:
    """(the parameters text, its parsed fields) of a PNG; a message for files without one."""
    if not path:
        return "", {}
    try:
        text = read_parameters(path)
    except (OSError, ValueError) as exc:
        raise gr.Error(f"not a readable image ({type(exc).__name__})", print_exception=False) from None
    if not text:
        raise gr.Error(
            "this image has no 'parameters' text chunk (not made by this app or AUTOMATIC1111?)",
            print_exception=False,
        )
    try:
        return text, parse_parameters(text)
    except MoSLoraError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def size_bounds(engine: Engine) -> tuple[int, int, int]:
    """(smallest, native, largest) width/height the sliders offer: ¼× to 4× the model's native size."""
    native = int(engine.defaults["width"])
    low = max(engine.limits.min_size, (native // 4) // 8 * 8 or 8)
    high = min(engine.limits.max_size, native * 4)
    return low, native, high


def _size_note(engine: Engine, width: float, height: float) -> str:
    """A warning when a size is outside 0.5×–2× of what the model was trained on."""
    _, native, _ = size_bounds(engine)
    off = [
        f"{name} {int(v)}" for name, v in (("width", width), ("height", height)) if not 0.5 <= v / native <= 2
    ]
    if not off:
        return ""
    return (
        f"**{' and '.join(off)} px: far from the model's native {native} px** (outside 0.5×–2×); "
        "expect repeated or broken subjects"
    )


def _refreshed(engine: Engine, values: tuple[Any, ...]) -> list[Any]:
    choices = engine.list_adapters()
    return [gr.update(choices=choices, value=v if v in choices else None) for v in values]


# ------------------------------------------------------------------------------------------- Generate


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

    @property
    def sampler_inputs(self) -> list[Any]:
        return [self.steps, self.cfg, self.scheduler, self.width, self.height]

    @property
    def dropdowns(self) -> list[Any]:
        return [name for _, name, _ in self.slots]

    @property
    def settings_outputs(self) -> list[Any]:
        """The widgets `_settings_updates` fills, in its order."""
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


def _generate(engine: Engine, req: GenerationRequest, progress: Any = None) -> list[Any]:
    with user_errors("generation"):
        return engine.generate(req, _step_reporter(progress))


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
        text = _adapter_info_markdown(engine, value)
        return text, gr.update(value=bool(value) and not text.startswith(REFUSED))

    name.change(picked, name, [info, enable], **_PRIVATE, queue=False)
    return enable, name, strength, info


def build_generate_tab(engine: Engine) -> GenerateTab:
    """Prompt, sampler settings, four adapter slots; the gallery with parameters and the seed used."""
    lim, d = engine.limits, engine.defaults
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
            tokens = gr.Markdown(_token_count(engine, ""), elem_id="prompt-tokens")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative-prompt")
            negative_tokens = gr.Markdown(_token_count(engine, ""), elem_id="negative-tokens")
            with gr.Row():
                steps = gr.Slider(1, lim.max_steps, value=d["steps"], step=1, label="Steps", elem_id="steps")
                cfg = gr.Slider(0, lim.max_guidance, value=d["guidance_scale"], step=0.5, label="CFG scale")
                scheduler = gr.Dropdown(list(SCHEDULERS), value=d["scheduler"], label="Sampler")
            low, native, high = size_bounds(engine)
            with gr.Row():
                width = gr.Slider(low, high, value=d["width"], step=8, label="Width", elem_id="width")
                height = gr.Slider(low, high, value=d["height"], step=8, label="Height", elem_id="height")
                n_images = gr.Slider(1, lim.max_images, value=1, step=1, label="Images")
            size_note = gr.Markdown("", elem_id="size-note")
            with gr.Row():
                random_seed = gr.Checkbox(value=True, label="Random seed")
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed")
            with gr.Accordion("img2img: start from an image", open=False):
                init_image = gr.Image(
                    label="Start image (resized to width x height)", type="pil", sources=["upload", "clipboard"],
                    elem_id="img2img-input",
                )  # fmt: skip
                denoise = gr.Slider(
                    0.05, 1.0, value=0.75, step=0.05, label="Denoising strength (0 keeps the image, 1 replaces it)",
                    elem_id="img2img-strength",
                )  # fmt: skip
            with gr.Accordion("Adapters", open=True):
                choices = engine.list_adapters()
                slot_parts = [_adapter_slot(engine, i, choices) for i in range(MAX_ADAPTER_SLOTS)]
                slots, infos = [part[:3] for part in slot_parts], [part[3] for part in slot_parts]
                refresh = gr.Button("Refresh adapter list", size="sm")
        with gr.Column(scale=2):
            with gr.Row():
                generate_btn = gr.Button(
                    "Generate (Ctrl+Enter)", variant="primary", size="lg", elem_id="generate-btn", scale=3
                )
                stop_btn = gr.Button("Stop", variant="stop", size="lg", elem_id="stop-btn", scale=1)
            gallery = gr.Gallery(
                label="Images", format="png", columns=2, height="auto", elem_id="gallery", type="filepath"
            )
            files = gr.File(
                label="Download PNG files", file_count="multiple", interactive=False, elem_id="downloads"
            )
            with gr.Row(equal_height=True):
                # a read-only text box: a Number would show 0 before any image exists
                used_seed = gr.Textbox(
                    value="", label="Seed used (first image)", interactive=False, elem_id="used-seed", scale=3
                )
                reuse_seed = gr.Button("Reuse seed", size="sm", elem_id="reuse-seed", scale=1)
            params_box = gr.Textbox(label="Parameters (PNG 'parameters' chunk)", lines=4, interactive=False)

    def ui_generate(prompt, negative, steps, cfg, random_seed, seed, scheduler, width, height, n, init, strength,
                    *slot_values, progress=gr.Progress()):  # fmt: skip
        triples = [slot_values[i : i + 3] for i in range(0, len(slot_values), 3)]
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
                adapters=[(a, s) for e, a, s in triples if e and a],
                init_image=init,
                strength=strength,
            )
        results = _generate(engine, req, progress)
        used, limit = engine.prompt_tokens(req.prompt)
        if used > limit:
            gr.Warning(f"the prompt has {used} tokens; the text encoder read only the first {limit}")
        gallery_items = [(str(r.path), f"seed {r.seed}") for r in results]
        return gallery_items, [str(r.path) for r in results], results[0].parameters, str(results[0].seed)

    for slider in (width, height):
        slider.change(
            lambda w, h: _size_note(engine, w, h), [width, height], size_note, **_PRIVATE, queue=False
        )
    for box, counter in ((prompt, tokens), (negative, negative_tokens)):
        box.change(lambda text: _token_count(engine, text), box, counter, **_PRIVATE, queue=False)
    stop_btn.click(engine.stop, None, None, **_PRIVATE, queue=False)  # outside the queue the generation holds
    inputs = [
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
        init_image,
        denoise,
    ]
    generate_btn.click(
        ui_generate,
        inputs + [w for slot in slots for w in slot],
        [gallery, files, params_box, used_seed],
        **_PRIVATE,
        **_DEVICE,
    )
    reuse_seed.click(
        lambda used: (gr.update(value=False), int(used)) if str(used).isdigit() else (gr.skip(), gr.skip()),
        used_seed,
        [random_seed, seed],
        **_PRIVATE,
        queue=False,
    )
    return GenerateTab(
        prompt, negative, random_seed, seed, steps, cfg, scheduler, width, height, slots, infos, refresh
    )


# -------------------------------------------------------------------------------------------- Compare


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
            result = compare(
                engine, req, adapter, parse_strengths(strengths), parse_seeds(seeds), _step_reporter(progress)
            )
        return str(result.path), str(result.path), result.parameters

    compare_btn.click(
        ui_compare,
        [prompt, negative, adapter, strengths, seeds, *sampler_inputs],
        [grid, grid_file, grid_params],
        **_PRIVATE,
        **_DEVICE,
    )
    adapter.change(lambda v: _adapter_info_markdown(engine, v), adapter, info, **_PRIVATE, queue=False)
    stop_btn.click(engine.stop, None, None, **_PRIVATE, queue=False)
    return adapter, refresh


# ---------------------------------------------------------------------------------------------- Train


@dataclass
class TrainTab:
    progress: Any
    message: Any
    loss: Any
    preview: Any
    quality: Any

    @property
    def outputs(self) -> list[Any]:
        return [self.progress, self.message, self.loss, self.preview, self.quality]


def _number(value: float, label: str, maximum: float | None = None, precision: int | None = 0) -> Any:
    return gr.Number(
        value=value, precision=precision, label=label, minimum=0 if maximum is None else 1, maximum=maximum
    )


def build_train_tab(jobs: TrainingJobs) -> TrainTab:
    """Uploads and settings on the left; progress, loss curve and preview on the right."""
    lim = jobs.limits
    gr.Markdown(
        "DreamBooth a new adapter on the base model. The finished adapter is copied into the "
        "adapters folder and can be picked at once. One job at a time."
    )
    with gr.Row():
        with gr.Column():
            images = gr.File(
                label=f"Subject images ({lim.min_images}-{lim.max_images})",
                file_count="multiple",
                file_types=["image"],
                type="filepath",
                elem_id="train-images",
            )
            thumbnails = gr.Gallery(
                label="Uploaded", columns=6, height=120, allow_preview=False, elem_id="train-thumbnails"
            )
            prompt = gr.Textbox(
                label="Instance prompt", placeholder="a photo of sks toy", elem_id="train-prompt"
            )
            class_prompt = gr.Textbox(
                label="Class prompt (optional: turns on prior preservation)", placeholder="a photo of a toy"
            )
            name = gr.Textbox(label="Adapter name", value="my-adapter", elem_id="train-name")
            with gr.Row():
                steps = _number(200, "Steps", lim.max_steps)
                rank = _number(4, "Rank", lim.max_rank)
                lr = gr.Number(value=1e-4, label="Learning rate", minimum=0)
            kind = gr.Radio(list(ADAPTER_TYPES), value="moslora", label="Adapter type")
            with gr.Accordion("More", open=False):
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=MAX_SEED)
                n_class = _number(20, "Class images", 500)
            keep = gr.Checkbox(
                value=True, label="On cancel, keep the adapter trained so far", elem_id="train-keep-on-cancel"
            )
            example = gr.Dropdown(
                choices=[
                    ("Uploaded images", ""),
                    ("Example subject: red-over-yellow circle (a new design)", "circle"),
                    ("Example subject: green-over-white star (a new outline)", "star"),
                ],
                value="",
                label="Train on (the examples need the toy-world model and show subject and prompt scores "
                "as they train)",
                elem_id="train-example-subject",
            )
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
        with gr.Column():
            tab = TrainTab(
                gr.HTML(_progress_html(0, 0, "idle")),
                gr.Markdown("", elem_id="train-message"),
                gr.LinePlot(
                    x="step", y="loss", color="curve", title="Training loss", height=220, elem_id="train-loss"
                ),
                gr.Image(
                    label="Latest preview",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="train-preview",
                ),
                gr.LinePlot(
                    x="step",
                    y="percent",
                    color="score",
                    title="Quality (example subject): % of images",
                    y_lim=[0, 100],
                    height=220,
                    visible=False,
                    elem_id="train-quality",
                ),
            )

    images.change(
        lambda files: [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])],
        images,
        thumbnails,
        **_PRIVATE,
        queue=False,
    )

    def ui_train(
        images, instance_prompt, class_prompt, n_steps, rank, lr, kind, name, seed, n_class, keep, example
    ):
        with user_errors("training"):
            files_in = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (images or [])]
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
                    seed=seed or 0,
                    num_class_images=n_class or 20,
                    keep_on_cancel=bool(keep),
                    example_subject=example or "",
                )
            )
        return st.message

    def use_example(key: str, current: str):
        from ..toyworld import SUBJECTS

        prompts = {s.instance_prompt for s in SUBJECTS.values()}
        if key and (not (current or "").strip() or current.strip() in prompts):
            return SUBJECTS[key].instance_prompt
        return current

    example.change(use_example, [example, prompt], prompt, **_PRIVATE, queue=False)
    start.click(
        ui_train,
        [images, prompt, class_prompt, steps, rank, lr, kind, name, seed, n_class, keep, example],
        tab.message,
        **_PRIVATE,
        concurrency_id="train",
        concurrency_limit=1,
    )
    cancel.click(
        lambda: jobs.cancel().message or "no training job is running",
        None,
        tab.message,
        **_PRIVATE,
        queue=False,
    )
    return tab


# One fixed label: the plot keeps the colour domain of its first frame, so a label that changed with the
# window ("mean of 1", "mean of 2", ...) made the smoothed curve disappear from the plot.
SMOOTHED = "smoothed (mean of the last 5 %)"


def loss_frame(losses: list[tuple[int, float]]) -> Any:
    """The loss curve for the plot: every step ("raw") and a moving average ("smoothed")."""
    import pandas as pd

    steps = [s for s, _ in losses]
    raw = pd.Series([v for _, v in losses], dtype="float64")
    window = max(1, len(losses) // 20)
    smooth = raw.rolling(window, min_periods=1).mean()
    return pd.DataFrame(
        {
            "step": pd.Series(steps + steps, dtype="int64"),
            "loss": pd.concat([raw, smooth], ignore_index=True),
            # always a text column, even empty: a numeric one (pandas' type for []) makes the plot colour by
            # a gradient and keep that encoding, so the curves never show
            "curve": pd.Series(["raw"] * len(steps) + [SMOOTHED] * len(steps), dtype=object),
        }
    )


def quality_frame(scores: list[tuple[int, dict[str, float]]]) -> Any:
    """The scorer's curve for the plot: one row per (step, score), in percent."""
    import pandas as pd

    rows = [(step, name, 100 * value) for step, named in scores for name, value in named.items()]
    return pd.DataFrame(
        {
            "step": pd.Series([r[0] for r in rows], dtype="int64"),
            "score": pd.Series([r[1] for r in rows], dtype=object),
            "percent": pd.Series([r[2] for r in rows], dtype="float64"),
        }
    )


def _training_poll(engine: Engine, jobs: TrainingJobs | None, train: TrainTab | None):
    """The timer's handler: progress, loss, preview; adapter lists refreshed once a job ends."""
    n_train = len(train.outputs) if train is not None else 0

    def tick(seen, *values):
        st = jobs.status() if jobs is not None else None
        if st is None or st.state == "idle":
            return [gr.skip(), seen, *[gr.skip()] * n_train, *[gr.skip()] * len(values)]
        note = (
            f"Training job running: step {st.step}/{st.max_steps}. Generation stays available but shares "
            "the device, so it is slower."
            if st.active
            else ""
        )
        text = f"{st.state}: step {st.step}/{st.max_steps}"
        if st.losses:
            text += f", loss {st.losses[-1][1]:.4f}"
        preview = gr.skip()
        if st.preview is not None:
            preview = gr.update(
                value=_enlarge(st.preview), label=f"step {st.preview_step}: {st.preview_prompt}"
            )
        outs = [
            _progress_html(st.step, st.max_steps, text),
            html.escape(st.message),
            loss_frame(st.losses) if st.losses else gr.skip(),  # nothing to draw before the first step
            preview,
            gr.update(value=quality_frame(st.scores), visible=True) if st.scores else gr.skip(),
        ]
        drops = _refreshed(engine, values) if st.finished != seen else [gr.skip()] * len(values)
        return [note, st.finished, *outs, *drops]

    return tick


# -------------------------------------------------------------------------------------------- History


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
        label="History", format="png", columns=6, height="auto", elem_id="history", type="filepath"
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
        return _png_info(str(files[evt.index]))

    outputs = [page, gallery, page_label]
    refresh.click(lambda n: show(n), page, outputs, **_PRIVATE, queue=False)
    prev_btn.click(lambda n: show(n, -1), page, outputs, **_PRIVATE, queue=False)
    next_btn.click(lambda n: show(n, +1), page, outputs, **_PRIVATE, queue=False)
    gallery.select(picked, page, [text, fields], **_PRIVATE, queue=False)
    send.click(
        lambda f: [*_settings_updates(f or {}), gr.Tabs(selected="generate")],
        fields,
        [*generate.settings_outputs, tabs],
        **_PRIVATE,
        queue=False,
    )
    return refresh, (lambda: show(1)), outputs


# ------------------------------------------------------------------------------------------- PNG info


def _settings_updates(fields: dict[str, Any]) -> list[Any]:
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
            return _png_info(path)

    upload.change(read, upload, [text, fields], **_PRIVATE)
    send.click(
        lambda f: [*_settings_updates(f or {}), gr.Tabs(selected="generate")],
        fields,
        [*generate.settings_outputs, tabs],
        **_PRIVATE,
        queue=False,
    )


# ------------------------------------------------------------------------------------------ scripting


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
            gr.Dropdown(list(SCHEDULERS), value=d["scheduler"], label="scheduler"),
            gr.Textbox(value="", label="adapter"),
            gr.Number(value=1.0, label="adapter_scale"),
            gr.Number(value=1, label="num_images"),
            gr.JSON(value=[], label="adapters"),
        ]
        output = gr.File(file_count="multiple", label="images")
        button = gr.Button("api")
        img_in = [gr.Image(type="pil", label="image"), gr.Number(value=0.75, label="strength")]
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
        return [str(r.path) for r in _generate(engine, req)]

    def api_img2img(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                    adapter_scale, num_images, adapters, image, strength):  # fmt: skip
        """img2img: `image` (resized to width x height) denoised from `strength` (0 keeps it, 1 replaces it)
        with the prompt; the other arguments as for /generate."""
        if image is None:
            raise gr.Error("give an image to start from", print_exception=False)
        req = request(prompt, negative_prompt, seed, steps, guidance_scale, width, height, scheduler, adapter,
                      adapter_scale, num_images, adapters, init_image=image,
                      strength=0.75 if strength is None else strength)  # fmt: skip
        return [str(r.path) for r in _generate(engine, req)]

    def api_png_info(path):
        """The `parameters` text chunk of a PNG (ours or AUTOMATIC1111's) and its fields."""
        return _png_info(path)

    button.click(api_generate, inputs, output, api_name="generate", **_DEVICE)
    img_button = gr.Button("img2img", visible=False)
    img_button.click(api_img2img, [*inputs, *img_in], output, api_name="img2img", **_DEVICE)
    png_button.click(api_png_info, png_in, png_out, api_name="png_info")


# ------------------------------------------------------------------------------------------------ app


# Ctrl+Enter (Cmd+Enter on a Mac) anywhere on the page presses Generate, as in AUTOMATIC1111; small images
# (a 32 px toy model's) are shown enlarged pixel by pixel, not blurred.
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
        f"## {html.escape(title)}\nBase model: `{html.escape(engine.base_name)}` ({engine.architecture}) · "
        f"adapters folder: `{html.escape(str(engine.adapters_dir))}`"
    )


def _switch_model(engine: Engine, jobs: TrainingJobs | None, generate: GenerateTab, title: str):
    """The base-model menu's handler: load the model, then refresh what depends on it."""

    def switch(name, *slot_names, progress=gr.Progress()):
        progress(0.1, desc=f"loading {name}")
        with user_errors("switching the base model"):
            engine.switch_model(name)
        if jobs is not None:  # the Train tab trains on the model shown
            jobs.base_model, jobs.sampler_defaults = engine.base_model, engine.defaults
        low, native, high = size_bounds(engine)
        sizes = [gr.update(minimum=low, maximum=high, value=native)] * 2
        sampler = [engine.defaults["steps"], engine.defaults["guidance_scale"], engine.defaults["scheduler"]]
        checks = []
        for value in slot_names:  # adapters picked for the old model are checked against the new one
            text = _adapter_info_markdown(engine, value)
            checks += [text, gr.update(value=bool(value) and not text.startswith(REFUSED))]
        return [_header(engine, title), *sizes, *sampler, *checks]

    outputs = [generate.width, generate.height, generate.steps, generate.cfg, generate.scheduler]
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
            with gr.Tab("Compare", id="compare"):
                compare_adapter, compare_refresh = build_compare_tab(engine, generate.sampler_inputs)
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
            switch, [model_menu, *generate.dropdowns], [header, *switch_outputs], **_PRIVATE, **_DEVICE
        )
        dropdowns = [*generate.dropdowns, compare_adapter]
        refresh = (lambda *v: _refreshed(engine, v), dropdowns, dropdowns)
        generate.refresh.click(*refresh, **_PRIVATE, queue=False)
        compare_refresh.click(*refresh, **_PRIVATE, queue=False)
        # Lists are current after a reload, without a click; only the choices change, so a pick the user makes
        # while the page is still loading is kept.
        demo.load(None, None, None, js=_PAGE_JS)  # runs in the browser once the page is up
        demo.load(first_page, None, history_outputs, **_PRIVATE, queue=False)
        demo.load(
            lambda: [gr.update(choices=engine.list_adapters())] * len(dropdowns),
            None,
            dropdowns,
            **_PRIVATE,
            queue=False,
        )
        seen_finished = gr.State(0)
        outputs = [busy_note, seen_finished, *(train.outputs if train else []), *dropdowns]
        gr.Timer(1.0).tick(
            _training_poll(engine, jobs, train), [seen_finished, *dropdowns], outputs, **_PRIVATE, queue=False
        )
    return demo
