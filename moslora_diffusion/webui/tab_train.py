"""The Train tab: a DreamBooth run from uploaded images or the example subject, with live curves."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..constants import ADAPTER_TYPES
from .engine import (
    MAX_SEED,
    Engine,
)
from .jobs import TrainingJobs, TrainRequest
from .widgets import PRIVATE, enlarge, number_box, progress_html, refreshed, user_errors

logger = logging.getLogger(__name__)


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
                steps = number_box(200, "Steps", lim.max_steps)
                rank = number_box(4, "Rank", lim.max_rank)
                lr = gr.Number(value=1e-4, label="Learning rate", minimum=0)
            kind = gr.Radio(list(ADAPTER_TYPES), value="moslora", label="Adapter type")
            with gr.Accordion("More", open=False):
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0, maximum=MAX_SEED)
                n_class = number_box(20, "Class images", 500)
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
                gr.HTML(progress_html(0, 0, "idle")),
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
        **PRIVATE,
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

    example.change(use_example, [example, prompt], prompt, **PRIVATE, queue=False)
    start.click(
        ui_train,
        [images, prompt, class_prompt, steps, rank, lr, kind, name, seed, n_class, keep, example],
        tab.message,
        **PRIVATE,
        concurrency_id="train",
        concurrency_limit=1,
    )
    cancel.click(
        lambda: jobs.cancel().message or "no training job is running",
        None,
        tab.message,
        **PRIVATE,
        queue=False,
    )
    return tab


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


def training_poll(engine: Engine, jobs: TrainingJobs | None, train: TrainTab | None):
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
                value=enlarge(st.preview), label=f"step {st.preview_step}: {st.preview_prompt}"
            )
        outs = [
            progress_html(st.step, st.max_steps, text),
            html.escape(st.message),
            loss_frame(st.losses) if st.losses else gr.skip(),  # nothing to draw before the first step
            preview,
            gr.update(value=quality_frame(st.scores), visible=True) if st.scores else gr.skip(),
        ]
        drops = refreshed(engine, values) if st.finished != seen else [gr.skip()] * len(values)
        return [note, st.finished, *outs, *drops]

    return tick
