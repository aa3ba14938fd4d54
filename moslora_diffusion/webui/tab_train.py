"""The Train tab: a DreamBooth run from uploaded images or the example subject, with live curves."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..constants import ADAPTER_TYPES
from .engine import Engine
from .jobs import TrainingJobs, TrainRequest
from .requests import MAX_SEED
from .widgets import PRIVATE, enlarge, number_box, progress_html, refreshed, user_errors

logger = logging.getLogger(__name__)


@dataclass
class TrainTab:
    progress: Any
    message: Any
    loss: Any
    preview: Any
    quality: Any
    signals: Any

    @property
    def outputs(self) -> list[Any]:
        return [self.progress, self.message, self.loss, self.preview, self.quality, self.signals]


def example_choices() -> list[tuple[str, str]]:
    """The "Train on" menu: uploaded images, or one of the toy world's bundled subjects."""
    from ..toyworld import SUBJECTS

    return [("Uploaded images", "")] + [
        (f"Example subject, {key}: {subject.description}", key) for key, subject in SUBJECTS.items()
    ]


def _default(field_name: str) -> Any:
    """A `TrainRequest` field's default: the form starts where the request does."""
    return TrainRequest.__dataclass_fields__[field_name].default


def _train_form(jobs: TrainingJobs) -> dict[str, Any]:
    """The left column: uploads, prompts, settings, the "Train on" menu and the buttons."""
    lim = jobs.limits
    w: dict[str, Any] = {}
    w["images"] = gr.File(
        label=f"Subject images ({lim.min_images}-{lim.max_images})",
        file_count="multiple",
        file_types=["image"],
        type="filepath",
        elem_id="train-images",
    )
    w["thumbnails"] = gr.Gallery(
        label="Uploaded", columns=6, height=120, allow_preview=False, elem_id="train-thumbnails"
    )
    w["prompt"] = gr.Textbox(
        label="Instance prompt", placeholder="a photo of sks toy", elem_id="train-prompt"
    )
    w["class_prompt"] = gr.Textbox(
        label="Class prompt (optional: turns on prior preservation)", placeholder="a photo of a toy"
    )
    w["name"] = gr.Textbox(label="Adapter name", value="my-adapter", elem_id="train-name")
    with gr.Row(elem_id="train-settings"):
        w["steps"] = number_box(_default("steps"), "Steps", lim.max_steps)
        w["rank"] = number_box(_default("rank"), "Rank", lim.max_rank)
        w["lr"] = gr.Number(value=_default("learning_rate"), label="Learning rate", minimum=0)
    w["kind"] = gr.Radio(list(ADAPTER_TYPES), value=_default("adapter"), label="Adapter type")
    with gr.Accordion("More", open=False):
        w["seed"] = gr.Number(value=_default("seed"), precision=0, label="Seed", minimum=0, maximum=MAX_SEED)
        w["n_class"] = number_box(_default("num_class_images"), "Class images", 500)
    w["keep"] = gr.Checkbox(
        value=True, label="On cancel, keep the adapter trained so far", elem_id="train-keep-on-cancel"
    )
    w["stop"] = gr.Checkbox(
        value=_default("stop_when_learned"),
        label="Stop when learnt (the learning signals decide; keeps the best validation's adapter)",
        elem_id="train-stop-when-learned",
    )
    w["example"] = gr.Dropdown(
        choices=example_choices(),
        value="",
        label="Train on (the examples need the toy-world model and show subject and prompt scores as they train)",
        elem_id="train-example-subject",
    )
    with gr.Row():
        w["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
        w["cancel"] = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
    return w


def _train_outputs() -> TrainTab:
    """The right column: progress, message, loss curve, latest preview and (example subjects) quality."""
    return TrainTab(
        gr.HTML(progress_html(0, 0, "idle")),
        gr.Markdown("", elem_id="train-message"),
        gr.LinePlot(
            x="step", y="loss", color="curve", title="Training loss", height=220, elem_id="train-loss"
        ),
        gr.Image(
            label="Latest preview", type="pil", format="png", interactive=False, elem_id="train-preview"
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
        gr.LinePlot(
            x="step",
            y="value",
            color="signal",
            title="Learning signals (subject fit relative to the start; binding and prior shifts)",
            height=220,
            visible=False,
            elem_id="train-signals",
        ),
    )


def _file_names(files: Any) -> list[str]:
    return [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]


def build_train_tab(jobs: TrainingJobs) -> TrainTab:
    """Uploads and settings on the left; progress, loss curve and preview on the right."""
    gr.Markdown(
        "DreamBooth a new adapter on the base model. The finished adapter is copied into the "
        "adapters folder and can be picked at once. One job at a time."
    )
    with gr.Row():
        with gr.Column():
            w = _train_form(jobs)
        with gr.Column():
            tab = _train_outputs()
    w["images"].change(_file_names, w["images"], w["thumbnails"], **PRIVATE, queue=False)

    def ui_train(images, instance_prompt, class_prompt, n_steps, rank, lr, kind, name, seed, n_class, keep, stop, example):  # fmt: skip
        with user_errors("training"):
            st = jobs.start(
                TrainRequest(
                    images=_file_names(images),
                    instance_prompt=instance_prompt,
                    adapter_name=name,
                    class_prompt=class_prompt,
                    steps=n_steps,
                    rank=rank,
                    learning_rate=lr,
                    adapter=kind,
                    seed=seed or 0,
                    num_class_images=n_class or _default("num_class_images"),
                    keep_on_cancel=bool(keep),
                    stop_when_learned=bool(stop),
                    example_subject=example or "",
                )  # fmt: skip
            )
        return st.message

    def use_example(key: str, current: str):
        """An example subject fills in its prompt and its recipe (steps, rank, learning rate): pressing Start
        then trains what the quick start trains."""
        from ..toyworld import SUBJECTS, subject_training_defaults

        if not key:
            return current, gr.skip(), gr.skip(), gr.skip()
        prompts = {s.instance_prompt for s in SUBJECTS.values()}
        prompt = (
            SUBJECTS[key].instance_prompt
            if not (current or "").strip() or current.strip() in prompts
            else current
        )
        recipe = subject_training_defaults(SUBJECTS[key])
        return prompt, recipe["max_train_steps"], recipe["rank"], recipe["learning_rate"]

    w["example"].change(
        use_example, [w["example"], w["prompt"]], [w["prompt"], w["steps"], w["rank"], w["lr"]], **PRIVATE,
        queue=False,
    )  # fmt: skip
    fields = [
        "images",
        "prompt",
        "class_prompt",
        "steps",
        "rank",
        "lr",
        "kind",
        "name",
        "seed",
        "n_class",
        "keep",
        "stop",
    ]
    w["start"].click(
        ui_train, [w[k] for k in [*fields, "example"]], tab.message, **PRIVATE,
        concurrency_id="train", concurrency_limit=1,
    )  # fmt: skip
    w["cancel"].click(
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


SIGNAL_LABELS = {
    "subject_fit": "subject fit / start",
    "binding": "binding",
    "class_shift": "class-prompt shift",
    "prompt_shift": "ordinary-prompt shift",
}


def signals_frame(signals: list[tuple[int, dict[str, float]]]) -> Any:
    """The learning signals for the plot: the subject fit relative to its first value, the others as they are."""
    import math

    import pandas as pd

    first = signals[0][1].get("subject_fit") if signals else None
    rows = []
    for step, named in signals:
        for key, label in SIGNAL_LABELS.items():
            value = named.get(key)
            if key == "subject_fit" and value is not None:
                value = value / first if first else None
            if value is not None and math.isfinite(value):
                rows.append((step, label, value))
    return pd.DataFrame(
        {
            "step": pd.Series([r[0] for r in rows], dtype="int64"),
            "signal": pd.Series([r[1] for r in rows], dtype=object),
            "value": pd.Series([r[2] for r in rows], dtype="float64"),
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
            # a job without scores (uploads) hides the previous job's curve instead of leaving it on screen
            gr.update(value=quality_frame(st.scores), visible=True)
            if st.scores
            else gr.update(visible=False),
            gr.update(value=signals_frame(st.signals), visible=True)
            if len(st.signals) > 1
            else gr.update(visible=False),
        ]
        drops = refreshed(engine, values) if st.finished != seen else [gr.skip()] * len(values)
        return [note, st.finished, *outs, *drops]

    return tick
