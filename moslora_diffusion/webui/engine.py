"""The generation engine behind the web UI: one pipeline, named schedulers, adapters by name, one lock.

Everything here is plain Python (no Gradio), so it can be used and tested directly::

    engine = Engine.from_pretrained("path/to/base", adapters_dir="adapters", output_dir="outputs")
    results = engine.generate(GenerationRequest(prompt="a red circle", seed=7,
                                                adapters=[("my_subject.safetensors", 0.8)]))
    results[0].path  # a PNG with an A1111-style ``parameters`` chunk
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import math
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .. import architectures, base_models, toyworld
from ..errors import (
    AdapterMismatchError,
    BaseModelError,
    EngineBusy,
    GenerationStopped,
    MoSLoraError,
    RequestError,
)
from ..formats.inspect import describe_adapter_file, read_adapter_header
from ..loading import check_file_fits, install_pipeline_methods
from ..sampling import make_scheduler
from .adapter_files import ADAPTER_SUFFIX, list_adapters, preview_path, safe_adapter_path
from .pngmeta import format_adapters, format_parameters, save_png
from .requests import (
    MAX_SEED,
    SCHEDULERS,
    GeneratedImage,
    GenerationRequest,
    Limits,
    model_limits,
    validate_request,
)

__all__ = ["Engine", "list_models", "load_adapter_file", "load_serving_pipeline"]


_DIGESTS: dict[Path, tuple[tuple[int, ...], str]] = {}


def _content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read again whenever the file's inode, size, mtime or ctime changed (a
    replaced file gets a new inode or ctime even when it keeps size and mtime; ctime cannot be set back)."""
    st = path.stat()
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    known = _DIGESTS.get(path)
    if known is not None and known[0] == stamp:
        return known[1]
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    _DIGESTS[path] = (stamp, digest)
    return digest


def _resolve_dtype(device: str, dtype: str | None):
    import torch

    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise RequestError(f"dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def list_models(models_dir: str | os.PathLike | None) -> dict[str, str]:
    """Base models a server offers: the bundled toy-world model, and in ``models_dir`` every diffusers folder
    and every single-file ``.safetensors`` checkpoint (adapter files there are not offered)."""
    found: dict[str, str] = {}
    toy = toyworld.base_model_path()
    if (toy / "model_index.json").is_file():
        found["toy-world (bundled)"] = str(toy)
    root = Path(models_dir) if models_dir else None
    if root is not None and root.is_dir():
        for entry in sorted(root.iterdir()):
            if (entry / "model_index.json").is_file() and not entry.name.startswith("."):
                found[entry.name] = str(entry)
        for file in base_models.list_single_files(root):
            found[file.name] = str(file)
    return found


def load_serving_pipeline(
    base_model: str | os.PathLike,
    device: str | None = None,
    dtype: str | None = None,
    configs: dict[str, str] | None = None,
):
    """Load a text-to-image pipeline: a diffusers folder or hub id (safetensors weights only) or a single-file
    checkpoint, built with the config folder of ``configs`` (architecture -> folder) that fits it."""
    device = _resolve_device(device)
    try:
        pipe = base_models.load_pipeline(
            base_model,
            config=base_models.config_for(base_model, configs),
            dtype=_resolve_dtype(device, dtype),
            use_safetensors=True,
        )
    except BaseModelError as exc:
        raise RequestError(str(exc)) from None
    if not hasattr(pipe, "load_lora_weights") or not hasattr(pipe, "unet"):
        raise RequestError(
            f"{base_model}: {type(pipe).__name__} is not a Stable Diffusion / SDXL pipeline with LoRA support"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def load_adapter_file(pipe: Any, path: Path, adapter_name: str) -> None:
    """Load one adapter file (native MoSLoRA or plain LoRA) into ``pipe`` under ``adapter_name``.

    ``pipe.load_moslora_weights`` folds native files and runs the fit check on every kind of file before
    handing it to diffusers' own LoRA loader.
    """
    install_pipeline_methods()
    pipe.load_moslora_weights(str(path), adapter_name=adapter_name)


def _default_settings(pipe: Any, base_model: str) -> dict[str, Any]:
    settings = {"steps": 25, "guidance_scale": 7.0, "scheduler": "DPM++ 2M"}
    scale = getattr(pipe, "vae_scale_factor", 8)
    size = int(pipe.unet.config.sample_size) * int(scale)
    settings["width"] = settings["height"] = size
    current = type(pipe.scheduler).__name__
    for name, (cls_name, extra) in SCHEDULERS.items():
        if cls_name == current and not extra:
            settings["scheduler"] = name
            break
    if Path(base_model).resolve() == toyworld.base_model_path().resolve():
        toy = toyworld.default_sampler_settings()  # the bundled toy model's agreed sampler settings
        settings.update(
            steps=toy["num_inference_steps"],
            guidance_scale=toy["guidance_scale"],
            width=toy["width"],
            height=toy["height"],
        )
    return settings


def _step_counter(total: int, progress: Callable[[int, int], None] | None) -> Callable[[Any], None]:
    """A callback for each denoising step (given the latents) that reports (steps done, total) to ``progress``."""
    done = 0

    def on_step(latents: Any = None) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return on_step


class Engine:
    """A loaded base pipeline plus the adapters folder, serving one generation at a time."""

    def __init__(
        self,
        pipe: Any,
        base_model: str | os.PathLike,
        adapters_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        limits: Limits | None = None,
        max_loaded_adapters: int = 8,
        models: dict[str, str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        configs: dict[str, str] | None = None,
    ):
        self.adapters_dir = Path(adapters_dir)
        self.output_dir = Path(output_dir)
        self.limits = limits or Limits()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._files = itertools.count()
        self._max_loaded = max_loaded_adapters
        self._device, self._dtype = device, dtype
        self.configs = dict(configs or {})  # architecture -> config folder for single-file models
        self._use_pipeline(pipe, base_model)
        # the base models this server may switch to, by name (never a path a client sends)
        self.models = dict(models or {})
        if self.base_model not in self.models.values():
            self.models[self.base_name] = self.base_model

    @property
    def model_name(self) -> str:
        """The name of the loaded base model in :attr:`models`."""
        return next(name for name, path in self.models.items() if path == self.base_model)

    def _use_pipeline(self, pipe: Any, base_model: str | os.PathLike) -> None:
        """Make ``pipe`` the loaded model; everything derived from the previous one is dropped."""
        self.pipe = pipe
        self.base_model = str(base_model)
        self.base_name = Path(self.base_model).name or self.base_model
        self.architecture = architectures.detect_pipeline(pipe)
        self.defaults = _default_settings(pipe, self.base_model)
        self.model_limits = model_limits(
            self.limits, int(self.defaults["width"])
        )  # what requests are checked against
        self._img2img: Any = None
        self._preview: Any = None  # the latent preview's colour map, fitted for this model on first use
        self._base_scheduler_config = dict(pipe.scheduler.config)
        self._schedulers: dict[str, Any] = {}
        # adapters live in the old pipeline's layers: they go with it, and are checked afresh on next use
        self._loaded: OrderedDict[str, tuple[tuple[int, int], str]] = OrderedDict()

    def switch_model(self, name: str) -> None:
        """Load the base model called ``name`` in :attr:`models` and drop the old one (waits for the device)."""
        if name not in self.models:
            raise RequestError(f"unknown base model {name!r}; choose one of {', '.join(self.models)}")
        if self.models[name] == self.base_model:
            return
        pipe = None
        self._acquire()
        try:
            old = self.pipe
            pipe = load_serving_pipeline(self.models[name], self._device, self._dtype, self.configs)
            self._use_pipeline(pipe, self.models[name])
            del old
            gc.collect()
        finally:
            self.lock.release()

    @classmethod
    def from_pretrained(
        cls,
        base_model: str | os.PathLike,
        adapters_dir: str | os.PathLike = "adapters",
        output_dir: str | os.PathLike = "outputs",
        device: str | None = None,
        dtype: str | None = None,
        limits: Limits | None = None,
        models: dict[str, str] | None = None,
        configs: dict[str, str] | None = None,
    ) -> Engine:
        return cls(
            load_serving_pipeline(base_model, device, dtype, configs),
            base_model,
            adapters_dir,
            output_dir,
            limits,
            models=models,
            device=device,
            dtype=dtype,
            configs=configs,
        )

    # ---- prompts --------------------------------------------------------------------------------------

    def prompt_tokens(self, text: str) -> tuple[int, int]:
        """(tokens in ``text``, tokens the text encoders read): beyond the second, the prompt is cut off.

        SDXL's two tokenizers may count differently; the larger count is reported against the smaller limit.
        """
        from .requests import strip_lora_tags

        text = strip_lora_tags(text or "")  # the tags are taken out before encoding: never counted
        counts, limits = [], []
        for tok in (getattr(self.pipe, "tokenizer", None), getattr(self.pipe, "tokenizer_2", None)):
            if tok is None:
                continue
            special = tok.num_special_tokens_to_add()
            counts.append(len(tok(text or "", truncation=False).input_ids) - special)
            limits.append(tok.model_max_length - special)
        return (max(counts), min(limits)) if counts else (0, 0)

    # ---- adapters -------------------------------------------------------------------------------------

    def list_adapters(self) -> list[str]:
        return list_adapters(self.adapters_dir)

    def adapter_path(self, name: str) -> Path:
        return safe_adapter_path(self.adapters_dir, name)

    def adapter_info(self, name: str) -> dict[str, Any]:
        """The adapter's description (header only), after checking that it fits the loaded base model."""
        header = check_file_fits(self.pipe, self.adapter_path(name))
        return describe_adapter_file(header, header_only=True)  # the header just read, not read again

    def adapter_catalog(self) -> list[dict[str, Any]]:
        """Every adapter in the folder with what a picker shows: kind (moslora, diffusers, kohya), format,
        architecture, rank, alpha, trigger (its training prompt), steps, size, whether it fits the loaded base
        model (and why not), sample image. Each header is read once; a file that cannot be read is listed with
        ``fits`` False and the reason."""
        catalog = []
        for name in self.list_adapters():
            facts = ("kind", "format", "architecture", "rank", "alpha", "trigger", "steps")
            entry: dict[str, Any] = {"name": name, **dict.fromkeys(facts), "fits": False, "problem": None,
                                     "preview": None}  # fmt: skip
            try:
                path = self.adapter_path(name)
                preview = preview_path(self.adapters_dir, name)
                entry["preview"] = str(preview) if preview else None
                header = read_adapter_header(path)
                info = describe_adapter_file(header, header_only=True)
                entry.update(kind=info["kind"], format=info["format"], architecture=info["architecture"],
                             rank=info["rank"], alpha=info["alpha"], trigger=info["prompt"], steps=info["steps"],
                             file_size=info["file_size"])  # fmt: skip
                check_file_fits(self.pipe, header)
                entry["fits"] = True
            except MoSLoraError as exc:  # named by the adapter's name, never by the server's path
                problem = str(exc)
                for shown in (str(self.adapters_dir.resolve() / name), str(self.adapters_dir / name)):
                    problem = problem.replace(shown, name)
                entry["problem"] = problem
            catalog.append(entry)
        return catalog

    def make_sample(self, name: str, prompt: str | None = None, seed: int = 0) -> Path:
        """Render adapter ``name`` at strength 1 with ``prompt`` (default: its training prompt) and the model's
        default settings, and save it as its sample image ``<stem>.preview.png`` next to it (replacing one)."""
        info = self.adapter_info(name)
        prompt = (prompt or "").strip() or info.get("prompt")
        if not prompt:
            raise RequestError(f"{name} records no training prompt: type a prompt for its sample image")
        d = self.defaults
        req = GenerationRequest(prompt=prompt, steps=d["steps"], guidance_scale=d["guidance_scale"], seed=seed,
                                width=d["width"], height=d["height"], scheduler=d["scheduler"],
                                adapters=[(name, 1.0)])  # fmt: skip
        image = self.render_requests([req])[0]
        stem = name.removesuffix(ADAPTER_SUFFIX)
        return save_png(image, self.adapters_dir, f"{stem}.preview", self.parameters_text(req, seed))

    def _ensure_loaded(self, name: str) -> str:
        path = self.adapter_path(name)
        key = _content_digest(path)  # not size and mtime: a replaced file may keep both
        if name in self._loaded:
            old_key, internal = self._loaded[name]
            if old_key == key:
                self._loaded.move_to_end(name)
                return internal
            self._unload(name)
        check_file_fits(self.pipe, path)
        while len(self._loaded) >= self._max_loaded:
            self._unload(next(iter(self._loaded)))
        internal = f"slot{next(self._ids)}"
        try:
            load_adapter_file(self.pipe, path, internal)
        except MoSLoraError:
            self._forget(internal)
            raise
        except Exception as exc:  # diffusers / PEFT raise assorted errors for misfitting files
            self._forget(internal)
            raise AdapterMismatchError(f"{name} could not be loaded into the base model: {exc}") from exc
        if not any(internal in names for names in self.pipe.get_list_adapters().values()):
            self._forget(internal)
            raise AdapterMismatchError(f"{name}: none of its layers matched the loaded base model")
        self._loaded[name] = (key, internal)
        return internal

    def _forget(self, internal: str) -> None:
        try:
            if any(internal in names for names in self.pipe.get_list_adapters().values()):
                self.pipe.delete_adapters(internal)
        except Exception:  # noqa: BLE001 - best-effort cleanup must not hide the real error
            pass

    def _unload(self, name: str) -> None:
        _, internal = self._loaded.pop(name)
        self._forget(internal)

    def _activate(self, adapters: Sequence[tuple[str, float]]) -> None:
        strengths: dict[str, float] = {}
        for name, strength in adapters:
            if strength != 0.0:  # a zero strength is the base model exactly: skip the work
                strengths[name] = strengths.get(name, 0.0) + strength
        active = [(self._ensure_loaded(n), s) for n, s in strengths.items() if s != 0.0]
        if not self._loaded:
            return
        if active:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in active], adapter_weights=[s for _, s in active])
        else:
            self.pipe.disable_lora()

    # ---- generation -----------------------------------------------------------------------------------

    def _scheduler(self, name: str):
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        return self._schedulers[name]

    def _acquire(self) -> None:
        if not self.lock.acquire(timeout=self.limits.busy_timeout_s):
            raise EngineBusy("the generator is busy with another request; try again in a moment")

    def parameters_text(self, req: GenerationRequest, seed: int, extra: dict[str, Any] | None = None) -> str:
        from moslora_diffusion import __version__

        fields = {
            "Steps": req.steps,
            "Sampler": req.scheduler,
            "CFG scale": f"{req.guidance_scale:g}",
            "Seed": seed,
            "Size": f"{req.width}x{req.height}",
            "Model": self.model_name,
            "Adapters": format_adapters(req.adapters) or None,
            "Denoising strength": f"{req.strength:g}" if req.init_image is not None else None,
            **(extra or {}),
            "Version": f"moslora-diffusion {__version__}",
        }
        return format_parameters(req.prompt, req.negative_prompt, fields)

    def _render(self, req: GenerationRequest, seed: int, on_step: Callable[[Any], None] | None):
        import torch

        def callback(pipe, step, timestep, kwargs):
            if self._stop.is_set():  # checked after every denoising step
                raise GenerationStopped("stopped on request")
            if on_step is not None:
                on_step(kwargs.get("latents"))
            return kwargs

        kwargs: dict[str, Any] = dict(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt or None,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            callback_on_step_end=callback,
            output_type="pil",
        )
        if req.init_image is None:
            pipe = self.pipe
            kwargs.update(width=req.width, height=req.height)
        else:
            pipe = self._img2img_pipe()
            pipe.scheduler = self.pipe.scheduler
            image = req.init_image.convert("RGB").resize((req.width, req.height), 1)  # 1 = Lanczos
            kwargs.update(image=image, strength=req.strength)
        with torch.inference_mode():
            out = pipe(**kwargs)
        return out.images[0]

    def _img2img_pipe(self) -> Any:
        """The img2img pipeline of the loaded model, sharing its modules (and so its adapters)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def history(self, page: int = 1, per_page: int = 24) -> tuple[list[Path], int]:
        """PNGs written to the outputs folder, newest first: (this page's files, number of pages)."""
        if per_page < 1 or page < 1:
            raise RequestError("page and page size start at 1")
        root = self.output_dir
        found = [p for p in root.glob("*/*.png") if not p.name.startswith(".")] if root.is_dir() else []
        found.sort(key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        pages = max(1, math.ceil(len(found) / per_page))
        return found[(page - 1) * per_page : page * per_page], pages

    def _save(self, image: Any, seed: int, parameters: str) -> Path:
        day = time.strftime("%Y-%m-%d")
        stem = f"{time.strftime('%H%M%S')}-{os.getpid()}-{next(self._files):05d}-{seed}"
        return save_png(image, self.output_dir / day, stem, parameters)

    def stop(self) -> None:
        """Interrupt the running generation or comparison grid after its current denoising step."""
        if self.lock.locked():
            self._stop.set()

    def preview(self, latents: Any, size: tuple[int, int] | None = None) -> Any:
        """A cheap RGB preview of the loaded model's latents (see :class:`.preview.LatentPreview`)."""
        if self._preview is None:
            from .preview import LatentPreview

            self._preview = LatentPreview(self.pipe.vae, getattr(self.pipe, "vae_scale_factor", 8))
        return self._preview(latents, size)

    def generate(
        self,
        req: GenerationRequest,
        progress: Callable[[int, int], None] | None = None,
        on_image: Callable[[GeneratedImage], None] | None = None,
        on_preview: Callable[[int, Any], None] | None = None,
    ) -> list[GeneratedImage]:
        """Validate, then render ``req.num_images`` images with seeds seed, seed+1, ...; save PNGs.

        ``on_image`` gets each image as soon as it is saved; ``on_preview`` gets (image index, a cheap preview
        of the latents) after each denoising step. After :meth:`stop`, the images finished so far are returned
        (``GenerationStopped`` if none is).
        """
        req = validate_request(req, self.model_limits)
        for name, _ in req.adapters:
            self.adapter_path(name)  # refuse bad names before waiting for the lock
        seed = random.randint(0, MAX_SEED - req.num_images) if req.seed == -1 else req.seed
        # img2img runs only the last `strength` share of the schedule
        steps = req.steps if req.init_image is None else max(1, int(req.steps * req.strength))
        count = _step_counter(steps * req.num_images, progress)
        results: list[GeneratedImage] = []

        def on_step(latents: Any) -> None:
            count(latents)
            if on_preview is not None and latents is not None:
                on_preview(len(results), self.preview(latents, (req.width, req.height)))

        self._acquire()
        self._stop.clear()
        try:
            self._activate(req.adapters)
            self.pipe.scheduler = self._scheduler(req.scheduler)
            for i in range(req.num_images):
                s = (seed + i) % (MAX_SEED + 1)
                try:
                    image = self._render(req, s, on_step)
                except GenerationStopped:
                    if results:
                        return results
                    raise
                text = self.parameters_text(req, s)
                results.append(GeneratedImage(self._save(image, s, text), s, text, image))
                if on_image is not None:
                    on_image(results[-1])
            return results
        finally:
            self._stop.clear()
            self.lock.release()

    def render_requests(
        self, reqs: Sequence[GenerationRequest], progress: Callable[[int, int], None] | None = None
    ) -> list[Any]:
        """Render one image per request (each with its own seed, sampler, steps and adapters) under one lock
        hold, without saving them (the comparison grids). Every request is checked before the first renders.

        After :meth:`stop`, the images finished so far are returned (``GenerationStopped`` if none is)."""
        reqs = [validate_request(replace(r, num_images=1), self.model_limits) for r in reqs]
        for req in reqs:
            if req.seed == -1:
                raise RequestError("each image of a grid needs its seed")
            for name, _ in req.adapters:
                self.adapter_path(name)  # refuse bad names before waiting for the lock
        on_step = _step_counter(sum(r.steps for r in reqs), progress)

        self._acquire()
        self._stop.clear()
        try:
            images = []
            for req in reqs:
                self._activate(req.adapters)
                self.pipe.scheduler = self._scheduler(req.scheduler)
                try:
                    images.append(self._render(req, req.seed, on_step))
                except GenerationStopped:
                    if images:
                        return images
                    raise
            return images
        finally:
            self._stop.clear()
            self.lock.release()
