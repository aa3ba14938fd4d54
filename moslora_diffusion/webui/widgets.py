"""Shared pieces of the web UI's tabs: error messages, progress, adapter and prompt notes, size bounds."""

from __future__ import annotations

import html
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gradio as gr

from ..errors import MoSLoraError
from .adapter_files import format_info
from .engine import Engine
from .pngmeta import parse_parameters, read_parameters

logger = logging.getLogger(__name__)


GENERATE_CONCURRENCY_ID = "device"


DEVICE = {"concurrency_id": GENERATE_CONCURRENCY_ID, "concurrency_limit": 1}


PRIVATE = {"api_visibility": "private"}


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


def streamed(work: Callable[[Callable[..., None]], Any], stop: Callable[[], None]) -> Iterator[tuple]:
    """Run ``work(emit)`` in a worker thread and yield each ``emit(*event)`` as a tuple as it comes, then
    ``("done", result)``; the worker's exception is raised here. If the consumer stops listening (the page
    went away), ``stop`` is called so that the worker ends after its current step."""
    events: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            events.put(("done", work(lambda *event: events.put(event))))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            events.put(("error", exc))

    worker = threading.Thread(target=run, name="moslora-generate", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            event = events.get()
            if event[0] == "error":
                finished = True
                raise event[1]
            yield event
            if event[0] == "done":
                finished = True
                return
    finally:
        if not finished:
            stop()


def progress_html(done: int, total: int, text: str) -> str:
    pct = 0 if total <= 0 else min(100, round(100 * done / total))
    return (
        f'<div id="train-progress"><progress value="{done}" max="{max(total, 1)}" style="width:100%"></progress>'
        f"<div>{html.escape(text)} ({pct}%)</div></div>"
    )


def enlarge(image: Any, side: int = 256) -> Any:
    """Pixel-exact enlargement of small previews (toy models draw 32 px images)."""
    w, h = image.size
    k = side // max(w, h)
    return image.resize((w * k, h * k), 0) if k > 1 else image  # 0 = nearest neighbour


def step_reporter(progress: Any):
    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, desc=f"step {done}/{total}")

    return report


def adapter_info_markdown(engine: Engine, name: str | None) -> str:
    """The adapter's description for the page, or the reason it is refused."""
    if not name:
        return ""
    try:
        return format_info(engine.adapter_info(name))
    except MoSLoraError as exc:  # shown inline (a toast cannot reach the page from this unqueued event)
        return f"{REFUSED} {html.escape(str(exc))}"


def start_image(**kwargs: Any) -> Any:
    """An image input (a file path) whose unreadable uploads reach the request check, which names them in one
    line, instead of failing inside Gradio's own preprocessing with its internals and a traceback. (The
    instance's ``preprocess`` is wrapped: a subclass of a Gradio component makes Gradio write a ``.pyi`` file
    beside this module.)"""
    from PIL import UnidentifiedImageError

    component = gr.Image(type="filepath", **kwargs)
    decode = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return decode(payload)
        except (UnidentifiedImageError, OSError, ValueError):
            return payload.path

    component.preprocess = preprocess
    return component


def token_count(engine: Engine, text: str | None) -> str:
    """The live counter under a prompt: tokens against the text encoder's limit, and a warning beyond it."""
    used, limit = engine.prompt_tokens(text or "")
    if used > limit:
        return (
            f"**{used} / {limit} tokens: the text encoder reads only the first {limit}; the rest is cut off**"
        )
    return f"{used} / {limit} tokens"


def png_info(path: str | None) -> tuple[str, dict[str, Any]]:
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
    """(smallest, native, largest) width/height: the loaded model's limits (`requests.model_limits`)."""
    lim = engine.model_limits
    return lim.min_size, int(engine.defaults["width"]), lim.max_size


def bounded_number(value: float, label: str, low: float, high: float, elem_id: str | None = None,
                   precision: int | None = 0) -> Any:  # fmt: skip
    """A number box that shows its range and lets any value through to the request check, which refuses one
    outside it by name (a slider clamped typed values silently while still showing them)."""
    return gr.Number(value=value, precision=precision, label=bounded_label(label, low, high), elem_id=elem_id)


def bounded_label(label: str, low: float, high: float) -> str:
    return f"{label} ({low:g}–{high:g})"


def size_note(engine: Engine, width: float, height: float) -> str:
    """A warning when a size is outside 0.5×–2× of what the model was trained on."""
    _, native, _ = size_bounds(engine)
    if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
        return ""  # an empty or impossible box: the request check names it on Generate
    off = [
        f"{name} {int(v)}" for name, v in (("width", width), ("height", height)) if not 0.5 <= v / native <= 2
    ]
    if not off:
        return ""
    return (
        f"**{' and '.join(off)} px: far from the model's native {native} px** (outside 0.5×–2×); "
        "expect repeated or broken subjects"
    )


def refreshed(engine: Engine, values: tuple[Any, ...]) -> list[Any]:
    choices = engine.list_adapters()
    return [gr.update(choices=choices, value=v if v in choices else None) for v in values]


def number_box(value: float, label: str, maximum: float | None = None, precision: int | None = 0) -> Any:
    return gr.Number(
        value=value, precision=precision, label=label, minimum=0 if maximum is None else 1, maximum=maximum
    )
