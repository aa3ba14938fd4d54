"""The web UI's training job: one DreamBooth run at a time in a background thread.

Uploaded images are decoded safely (format allow-list, pixel limit) and re-saved as PNG into the job's
folder; the library's ``moslora_diffusion.training.run_training`` does the work; its events feed a
status snapshot the UI polls. The finished weights are copied (atomically) into the adapters folder.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from .. import toyworld
from ..base_models import config_for
from ..constants import ADAPTER_TYPES
from ..durable import copy_atomic, write_image
from ..errors import JobBusy, RequestError
from ..toyworld.quality import scorer_for
from .adapter_files import ADAPTER_SUFFIX, PREVIEW_SUFFIXES
from .requests import MAX_IMAGE_BYTES

__all__ = ["UploadLimits", "TrainRequest", "JobStatus", "TrainingJobs", "decode_uploads"]

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


CANCELLING = "cancelling after the current step..."
# The status line for training events (the events' own messages name server paths).
_EVENT_NOTES = {"validation": "step {step}: preview updated", "checkpoint": "step {step}: checkpoint saved"}


@dataclass(frozen=True)
class UploadLimits:
    min_images: int = 3
    max_images: int = 30
    max_file_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = 4096 * 4096
    max_steps: int = 5000
    max_rank: int = 128


@dataclass
class TrainRequest:
    """What the Train tab asks for. ``class_prompt`` turns on prior preservation."""

    images: list[str]
    instance_prompt: str
    adapter_name: str
    class_prompt: str = ""
    steps: int = 200
    rank: int = 4
    learning_rate: float = 1e-4
    adapter: str = "moslora"
    seed: int = 0
    num_class_images: int = 20
    resolution: int | None = None
    validation_every: int | None = None
    keep_on_cancel: bool = False  # a cancelled job still installs the adapter trained so far
    stop_when_learned: bool = False  # --stop_when_learned: end when the signals say the subject is learnt
    # train a bundled example subject (its images and captions; the toy base model only) instead of
    # uploads: the job then reports subject and prompt scores as it trains (a learning curve). A subject key
    # ("circle", "star"); True means the default subject, False or "" uploads.
    example_subject: bool | str = False

    def validate(self, limits: Any) -> None:
        """Raise `RequestError` naming the first field outside what ``limits`` (``UploadLimits``) allow."""
        if not (self.instance_prompt or "").strip():
            raise RequestError("instance prompt is empty (e.g. 'a photo of sks toy')")
        if self.adapter not in ADAPTER_TYPES:
            raise RequestError(f"adapter type must be one of {ADAPTER_TYPES}, got {self.adapter!r}")
        for field_name, high in (("steps", limits.max_steps), ("rank", limits.max_rank)):
            value = getattr(self, field_name)
            if int(value) != value or not 1 <= int(value) <= high:
                raise RequestError(f"{field_name} must be a whole number from 1 to {high}, got {value}")
        if not 0 < float(self.learning_rate) <= 1e-2:
            raise RequestError(f"learning rate must be in (0, 0.01], got {self.learning_rate}")

    def example(self, base_model: str) -> Any:
        """The bundled subject this request trains, or None for uploads (refused off the toy base model)."""
        if not self.example_subject:
            return None
        if not toyworld.is_toy_base(base_model):
            raise RequestError("the bundled example subject trains on the bundled toy-world base model only")
        try:
            return toyworld.get_subject(None if self.example_subject is True else str(self.example_subject))
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    def config_fields(
        self, base_model: str, example: Any, instance_dir: Path, job_dir: Path, sampler: dict[str, Any]
    ) -> dict[str, Any]:
        """The training settings (`TrainConfig` fields) of this request, run in ``job_dir``; ``example`` is
        :meth:`example`'s answer."""
        prompt, class_prompt = self.instance_prompt.strip(), (self.class_prompt or "").strip()
        recipe: dict[str, Any] = {}
        if example is not None:  # the subject's own adapter targets and batch; the form sets the rest
            defaults = toyworld.subject_training_defaults(example)
            keys = ("unet_targets", "train_batch_size", "train_text_encoder", "text_encoder_targets",
                    "signal_prompts")  # fmt: skip
            recipe = {k: defaults[k] for k in keys if k in defaults}
        steps = int(self.steps)
        return dict(
            pretrained_model_name_or_path=base_model,
            instance_data_dir=str(instance_dir),
            instance_prompt=prompt,
            with_prior_preservation=bool(class_prompt),
            class_prompt=class_prompt or None,
            class_data_dir=str(job_dir / "class") if class_prompt else None,
            num_class_images=int(self.num_class_images),
            output_dir=str(job_dir / "output"),
            max_train_steps=steps,
            rank=int(self.rank),
            learning_rate=float(self.learning_rate),
            adapter=self.adapter,
            resolution=self.resolution,
            bucket=True,  # photos keep their aspect ratio
            bucket_step=64 if (self.resolution or sampler.get("width", 512)) >= 256 else 8,
            seed=int(self.seed),
            validation_prompt=prompt,
            num_validation_images=1,
            validation_steps=self.validation_every or max(1, steps // 4),
            validation_inference_steps=int(sampler.get("steps", 25)),
            validation_guidance_scale=float(sampler.get("guidance_scale", 5.0)),
            checkpointing_steps=0,
            stop_when_learned=bool(self.stop_when_learned),
            **recipe,
        )


@dataclass
class JobStatus:
    """A snapshot of the current (or last) job, safe to hand to the UI."""

    state: str = "idle"  # idle, running, cancelling, done, cancelled, failed
    step: int = 0
    max_steps: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    scores: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, name -> 0..1)
    signals: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # (step, signal -> value)
    preview: Any = None  # PIL image of the latest validation sample
    preview_step: int | None = None
    preview_prompt: str = ""  # the prompt the previews are drawn with
    message: str = ""
    adapter_name: str | None = None
    finished: int = 0  # increases each time a job ends (lets the UI refresh its adapter lists once)
    started_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("running", "cancelling")


def _check_name(name: str, adapters_dir: Path) -> str:
    name = (name or "").strip().removesuffix(ADAPTER_SUFFIX)
    if not _NAME_RE.match(name):
        raise RequestError(
            f"adapter name {name!r} refused: use 1-64 letters, digits, '-' or '_' (starting with a letter or digit)"
        )
    if (adapters_dir / f"{name}{ADAPTER_SUFFIX}").exists():
        raise RequestError(f"an adapter named {name}{ADAPTER_SUFFIX} already exists; choose another name")
    return name


def decode_uploads(paths: list[str], dest: Path, limits: UploadLimits) -> list[Path]:
    """Decode uploaded images safely and re-save them as RGB PNGs in ``dest``; refuse anything else."""
    if not paths:
        raise RequestError(f"upload {limits.min_images} to {limits.max_images} images of the subject")
    if not limits.min_images <= len(paths) <= limits.max_images:
        raise RequestError(
            f"{len(paths)} files uploaded; give between {limits.min_images} and {limits.max_images} images"
        )
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(paths):
        src = Path(src)
        label = src.name
        if src.stat().st_size > limits.max_file_bytes:
            raise RequestError(f"{label}: larger than {limits.max_file_bytes // (1024 * 1024)} MiB")
        try:
            with Image.open(src) as im:
                if im.format not in ALLOWED_FORMATS:
                    raise RequestError(
                        f"{label}: {im.format or 'unknown'} files are not accepted; use PNG, JPEG or WebP"
                    )
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise RequestError(
                        f"{label}: {w}x{h} pixels is more than the limit of {limits.max_pixels:,}"
                    )
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    im.load()
                rgb = ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError(f"{label}: not an image this app accepts ({exc})") from None
        except OSError as exc:
            raise RequestError(f"{label}: the image could not be decoded ({exc})") from None
        path = dest / f"{i:03d}.png"
        rgb.save(path, format="PNG")
        out.append(path)
    return out


def _install_adapter(weights: Path, adapters_dir: Path, name: str, sample: Any = None) -> str:
    """Copy ``weights`` to ``adapters_dir/name.safetensors`` atomically; add a suffix if the name got taken.
    ``sample`` (the last validation image) becomes its card's sample image, ``name.preview.png``."""
    adapters_dir.mkdir(parents=True, exist_ok=True)
    final, k = name, 2
    while (adapters_dir / f"{final}{ADAPTER_SUFFIX}").exists():
        final, k = f"{name}-{k}", k + 1
    if sample is not None:  # first, so that the adapter is never listed without it
        write_image(adapters_dir / f"{final}{PREVIEW_SUFFIXES[0]}", sample)
    copy_atomic(weights, adapters_dir / f"{final}{ADAPTER_SUFFIX}")
    return f"{final}{ADAPTER_SUFFIX}"


class TrainingJobs:
    """Runs at most one training job; ``backend`` is the training module (``TrainConfig``,
    ``validate_config``, ``run_training``), injectable for tests."""

    def __init__(
        self,
        base_model: str,
        adapters_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        limits: UploadLimits | None = None,
        backend: ModuleType | Any | None = None,
        sampler_defaults: dict[str, Any] | None = None,
        configs: dict[str, str] | None = None,
    ):
        self.base_model = str(base_model)
        self.configs = dict(configs or {})  # architecture -> config folder for single-file base models
        self.adapters_dir = Path(adapters_dir)
        self.work_dir = Path(work_dir)
        self.limits = limits or UploadLimits()
        self._backend = backend
        self.sampler_defaults = sampler_defaults or {}
        self._lock = threading.Lock()
        self._status = JobStatus()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- backend ------------------------------------------------------------------------------------

    def backend(self):
        if self._backend is None:
            self._backend = importlib.import_module("moslora_diffusion.training")
        return self._backend

    # ---- status -------------------------------------------------------------------------------------

    def status(self) -> JobStatus:
        with self._lock:
            snap = copy.copy(self._status)
            snap.losses = list(self._status.losses)
            snap.scores = list(self._status.scores)
            snap.signals = list(self._status.signals)
            return snap

    def _update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._status, key, value)

    def _on_event(self, event: Any) -> None:
        with self._lock:
            st = self._status
            st.step = int(getattr(event, "step", st.step) or st.step)
            st.max_steps = int(getattr(event, "max_steps", st.max_steps) or st.max_steps)
            loss = getattr(event, "loss", None)
            if event.kind == "step" and loss is not None:
                st.losses.append((st.step, float(loss)))
                if len(st.losses) > 5000:  # keep the curve light: drop every other old point
                    st.losses = st.losses[:2500:2] + st.losses[2500:]
            scores = getattr(event, "scores", None)
            if event.kind == "scores" and scores:
                st.scores.append((st.step, dict(scores)))
            if event.kind == "signals" and scores:
                st.signals.append((int(event.step), {k: v for k, v in scores.items() if k != "step"}))
            images = getattr(event, "images", None)
            if images:
                st.preview, st.preview_step = images[0], st.step
            note = _EVENT_NOTES.get(event.kind)
            if note:  # what happened, in words: never the server's file paths
                text = note.format(step=st.step)
                st.message = f"{CANCELLING} ({text})" if st.state == "cancelling" else text

    # ---- control ------------------------------------------------------------------------------------

    def start(self, req: TrainRequest) -> JobStatus:
        """Validate everything, prepare the data folder, then start training in a background thread."""
        self._refuse_if_busy()
        req.validate(self.limits)
        name = _check_name(req.adapter_name, self.adapters_dir)
        example = req.example(self.base_model)
        job_dir = Path(
            tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-", dir=self._mkwork())
        )
        if example is not None:
            instance_dir = example.path  # read only: its images and per-image captions
        else:
            instance_dir = job_dir / "instance"
            decode_uploads(list(req.images), instance_dir, self.limits)
        backend = self.backend()
        cfg = backend.TrainConfig(
            **req.config_fields(self.base_model, example, instance_dir, job_dir, self.sampler_defaults),
            config=config_for(self.base_model, self.configs),
        )
        try:
            backend.validate_config(cfg)
        except OSError as exc:
            raise RequestError(str(exc)) from None
        return self._launch(cfg, name, req)

    def _refuse_if_busy(self) -> None:
        with self._lock:
            if self._status.active:
                raise JobBusy("a training job is already running; wait for it or cancel it first")

    def _launch(self, cfg: Any, name: str, req: TrainRequest) -> JobStatus:
        with self._lock:
            if self._status.active:
                raise JobBusy("a training job is already running; wait for it or cancel it first")
            self._cancel.clear()
            finished = self._status.finished
            self._status = JobStatus(
                state="running",
                max_steps=int(req.steps),
                message=f"training {name} ({req.adapter}, rank {int(req.rank)}, {int(req.steps)} steps)",
                preview_prompt=req.instance_prompt.strip(),
                finished=finished,
                started_at=time.time(),
            )
            self._thread = threading.Thread(
                target=self._run,
                args=(cfg, name, bool(req.keep_on_cancel)),
                name="moslora-train",
                daemon=True,
            )
            self._thread.start()
        return self.status()

    def _mkwork(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir

    def cancel(self) -> JobStatus:
        with self._lock:
            if self._status.active:
                self._cancel.set()
                self._status.state = "cancelling"
                self._status.message = CANCELLING
        return self.status()

    def wait(self, timeout: float | None = None) -> JobStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    def _run(self, cfg: Any, name: str, keep_on_cancel: bool = False) -> None:
        backend = self.backend()
        try:
            scorer = scorer_for(cfg)  # subject / prompt scores for the bundled subject on the toy model
            extra = {"scorer": scorer} if scorer is not None else {}
            result = backend.run_training(
                cfg, callback=self._on_event, should_stop=self._cancel.is_set, **extra
            )
            written = result.weights_path is not None and Path(result.weights_path).is_file()
            if (result.cancelled or self._cancel.is_set()) and keep_on_cancel and written:
                adapter = _install_adapter(
                    Path(result.weights_path), self.adapters_dir, name, self.status().preview
                )
                state, message = (
                    "cancelled",
                    f"cancelled after {result.steps_done} steps; the adapter trained so far is {adapter} "
                    "in the adapters folder",
                )
            elif result.cancelled or self._cancel.is_set():
                state, adapter, message = (
                    "cancelled",
                    None,
                    f"cancelled after {result.steps_done} steps; no adapter saved",
                )
            elif result.weights_path is None or not Path(result.weights_path).is_file():
                state, adapter, message = "failed", None, "training ended without writing weights"
            else:
                adapter = _install_adapter(
                    Path(result.weights_path), self.adapters_dir, name, self.status().preview
                )
                loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
                learnt = ""
                if getattr(result, "learned", None):
                    learnt = (f"; stopped when learnt ({result.learned}), keeping step {result.kept_step}'s "
                              "adapter")  # fmt: skip
                state, message = (
                    "done",
                    f"done: {adapter} is in the adapters folder ({result.steps_done} steps{loss}{learnt})",
                )
        except Exception as exc:  # report, never crash the server
            logger.exception("training job failed")
            state, adapter, message = "failed", None, f"training failed: {type(exc).__name__}: {exc}"
        with self._lock:
            self._status.state = state
            self._status.adapter_name = adapter
            self._status.message = message
            self._status.finished += 1
