"""The DreamBooth training loop: `run_training(cfg)`.

Reads like the algorithm; the pieces live in the sibling modules:

    check inputs -> load models -> add adapters -> (generate class images) -> cache latents / prompts
    -> for each step: noise latents, predict, loss (+ prior loss), backward, step
       (checkpoints, validation, cancel)  -> write adapter files, loss curve, model card
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from .. import sampling
from ..compat import reset_accelerate_state
from ..errors import NonFiniteLossError
from ..reproducible import require_reproducible_math
from . import buckets, data, models, outputs, prior, run_folder, signals, validation
from . import checkpoint as ckpt
from .args import TrainConfig
from .batches import PHASE_BACKWARD, PHASE_CHECKS, PHASE_OPTIMIZER, RunState, enable_caches, micro_batch_loss
from .dataset_config import with_dataset_settings
from .events import TrainEvent, TrainResult
from .model_card import render_model_card, write_model_card
from .optimizers import evaluation_weights, make_optimizer, set_mode
from .preflight import validate_config
from .run_setup import (
    base_model_metadata,
    check_compile_support,
    check_distributed_support,
    compile_unet,
    enable_gradient_checkpointing,
    load_sources,
    make_accelerator,
    make_lr_scheduler,
    shared_seed,
    training_metadata,
)
from .stopping import StopRule

logger = logging.getLogger(__name__)

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


Scorer = Callable[[Any], dict[str, float]]


def run_training(
    cfg: TrainConfig,
    callback: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    scorer: Scorer | None = None,
) -> TrainResult:
    """Train a DreamBooth adapter as `cfg` says; write weights, checkpoints, samples and a model card.

    `callback(event)` receives `TrainEvent`s on the main process. `should_stop()` returning True ends
    training after the current step, writing a checkpoint and the adapter files of what was done
    (`TrainResult.cancelled` is then True). Raises `TrainConfigError` for bad input (before loading any
    model) and `NonFiniteLossError` when the loss becomes NaN/inf (the last good checkpoint is kept).

    `scorer(pipe)` (optional) measures quality during training: at every validation step (every
    `--validation_steps`, with or without a validation prompt) and at the end it gets a text-to-image
    pipeline around the models being trained and returns named scores in [0, 1]. They are sent as "scores"
    events, printed, kept in checkpoints (a resumed run continues the curve) and written to `quality.json` and
    `quality_curve.png`. A scorer that also has `request` (a `sampling.SampleRequest`) and `score(images)`
    gets its images drawn in the same pipeline calls as the validation prompt's instead (calls of up to 64
    images: keep a request at a large resolution small on a GPU). The toy world's
    scorer (`moslora_diffusion.toyworld.quality`) reports subject and prompt fidelity; any other data set can
    bring its own.
    """
    validate_config(cfg)
    cfg = with_dataset_settings(cfg)  # a dataset file's resolution, batch size and buckets
    require_reproducible_math()  # before the first matrix product of the run
    started = time.time()
    accelerator = make_accelerator(cfg)
    try:
        with run_folder.hold_output_dir(cfg, accelerator.is_main_process):
            trainer = Trainer.setup(cfg, accelerator, callback)
            trainer.scorer = scorer
            trainer.resume()
            return trainer.train(should_stop, started)
    finally:
        accelerator.end_training()
        reset_accelerate_state()


class Trainer:
    """One DreamBooth run in phases: `setup`, `resume`, `train` (= `step` + `checkpoint` + `validate`), `finish`."""

    def __init__(self, run: RunState, *, optimizer: Any, lr_scheduler: Any, trained: dict[str, torch.nn.Module],
                 wrapped: dict[str, torch.nn.Module], max_steps: int, emit: Callable[[TrainEvent], None],
                 resume_path: Path | None, fingerprint: dict[str, Any]) -> None:  # fmt: skip
        self.run = run
        self.cfg = run.cfg
        self.accelerator = run.accelerator
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.trained = trained  # component -> unwrapped model holding a trainable adapter
        self.wrapped = wrapped  # the same, as accelerate prepared them
        self.max_steps = max_steps
        self.emit = emit
        self.resume_path = resume_path
        self.fingerprint = fingerprint  # of this run, stored in every checkpoint
        self.out = Path(self.cfg.output_dir)
        self.is_main = self.accelerator.is_main_process
        self.global_step = 0
        self.last_checkpoint: Path | None = None
        self.last_grid: Path | None = None
        self.scorer: Scorer | None = None
        self.quality: list[dict[str, float]] = []  # {"step": n, score name: value, ...} per scoring
        self.signals: list[dict[str, float]] = []  # {"step": n, signal name: value, ...} per validation
        self.probe: signals.SignalProbe | None = None
        self.stop_rule = StopRule.from_config(self.cfg)
        self.best: tuple[int, dict[str, torch.Tensor]] | None = (
            None  # (step, adapter) with --stop_when_learned
        )
        self.learned: str | None = None  # why --stop_when_learned stopped the run
        self.last_validated = -1
        self.validation_s = 0.0  # wall time spent in validate(): signals, scorer, samples
        self.kept_step = 0
        self.params = [p for m in trained.values() for p in m.parameters() if p.requires_grad]

    # ---- setup ------------------------------------------------------------------------------------------

    @classmethod
    def setup(
        cls, cfg: TrainConfig, accelerator: Any, callback: Callable[[TrainEvent], None] | None
    ) -> Trainer:
        """Load the models, add the adapters, read the data, build optimizer and schedule."""
        is_main = accelerator.is_main_process
        emit = callback if (callback is not None and is_main) else (lambda event: None)
        resume_path = run_folder.resolve_resume_path(cfg)
        if cfg.resume_from_checkpoint and resume_path is None:
            logger.info("no checkpoint in %s yet: starting a new run", cfg.output_dir)
        seed = shared_seed(cfg, accelerator, ckpt.read_state(resume_path) if resume_path else None)
        check_distributed_support(cfg, accelerator)
        check_compile_support(cfg, accelerator.device)

        from accelerate.utils import set_seed

        set_seed(seed)
        weight_dtype = _DTYPES[cfg.mixed_precision]
        comps = models.load_components(cfg, weight_dtype, accelerator.device)
        if is_main:  # after the base model loaded: one that cannot be loaded leaves the folder as it was
            run_folder.prepare_output_dir(cfg, seed)
        accelerator.wait_for_everyone()
        resolution = cfg.resolution or comps.default_resolution()
        models.add_adapters(cfg, comps)  # same seed on every process: identical initial adapters
        enable_gradient_checkpointing(cfg, comps)
        compile_unet(cfg, comps)
        if cfg.with_prior_preservation and prior.missing_class_images(cfg):
            if is_main:
                prior.generate_class_images(cfg, comps.arch, resolution, accelerator.device, weight_dtype)
            accelerator.wait_for_everyone()
        images = load_sources(cfg)
        instances, classes, slots = images.instances, images.classes, images.instance_slots

        bucket_of = None
        if cfg.bucket:
            bucket_of = buckets.buckets_for(cfg, [s.image.size for s in instances], resolution)
            if is_main:
                tqdm.write(f"aspect-ratio buckets (width x height):\n{buckets.histogram(bucket_of)}")
            order = buckets.BucketOrder(
                [bucket_of[i] for i in slots], cfg.train_batch_size, accelerator.num_processes, seed
            )
        else:
            order = data.SampleOrder(len(slots), cfg.train_batch_size, accelerator.num_processes, seed)
        steps_per_epoch = math.ceil(order.micro_batches_per_epoch() / cfg.gradient_accumulation_steps)
        max_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        optimizer = make_optimizer(cfg, comps, accelerator.num_processes)
        lr_scheduler = make_lr_scheduler(cfg, optimizer, max_steps)
        trained = comps.adapted_models()
        prepared = accelerator.prepare(*trained.values(), optimizer)
        wrapped, optimizer = dict(zip(trained, prepared[:-1])), prepared[-1]
        noise_generator = torch.Generator(device=accelerator.device).manual_seed(
            seed + 7 + accelerator.process_index
        )
        torch.manual_seed(seed + 1000 * accelerator.process_index)  # dropout differs per process, as in DDP
        run = RunState(
            cfg=cfg,
            accelerator=accelerator,
            comps=comps,
            resolution=resolution,
            seed=seed,
            instances=instances,
            classes=classes,
            order=order,
            bucket_of=bucket_of,
            instance_slots=slots,
            class_slots=images.class_slots,
            noise_generator=noise_generator,
            unet=wrapped["unet"],
            text_encoders=[wrapped.get(k, m) for k, m in comps.text_components().items()],
        )
        return cls(run, optimizer=optimizer, lr_scheduler=lr_scheduler, trained=trained, wrapped=wrapped,
                   max_steps=max_steps, emit=emit, resume_path=resume_path,
                   fingerprint=run_folder.fingerprint(cfg))  # fmt: skip

    def resume(self) -> None:
        """Restore adapter, optimizer, schedule, RNG and loss history from the checkpoint to resume, if any."""
        if self.resume_path is not None:
            state = ckpt.load_checkpoint(
                self.resume_path,
                models=self.trained,
                optimizer=self.optimizer,
                lr_scheduler=self.lr_scheduler,
                noise_generator=self.run.noise_generator,
                rank=self.accelerator.process_index,
            )
            self.global_step = int(state["step"])
            self.run.losses = list(state.get("losses", []))
            self.quality = list(state.get("quality", []))
            self.signals = list(state.get("signals", []))
            if self.cfg.stop_when_learned and self.signals and self.signals[-1]["step"] == self.global_step:
                self.learned = self.stop_rule.reason(
                    self.signals
                )  # a run that had stopped here stays stopped
            best = ckpt.read_best_adapter(self.resume_path)
            if best is not None and state.get("best_step") is not None:
                self.best = (int(state["best_step"]), best)
            self.last_checkpoint = self.resume_path
            logger.info("resumed from %s at step %d", self.resume_path, self.global_step)
        enable_caches(self.run)
        if self.cfg.report_to == "tensorboard":
            hparams = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
            self.accelerator.init_trackers("moslora-dreambooth", config=hparams)

    def _start_signals(self) -> None:
        """At the first validation (never before the first step: it would delay it): draw the probes (the same
        for a resumed run: they depend on the seed only) and, in a new run, record the untrained adapter's
        signals as step 0 — the base model's, measured with the adapters off (a new adapter adds exactly 0)."""
        self.probe = signals.SignalProbe(self.run, signals.signal_prompts(self.cfg.signal_prompts))
        if not self.signals:
            with signals.adapters_off(self.probe.models()):
                self._measure_signals(step=0)

    # ---- the loop ---------------------------------------------------------------------------------------

    def train(self, should_stop: Callable[[], bool] | None, started: float) -> TrainResult:
        """Step until max_steps (or a stop request), with checkpoints and validation on schedule."""
        cfg = self.cfg
        for m in self.wrapped.values():
            m.train()
        set_mode(self.optimizer, training=True)
        bar = tqdm(total=self.max_steps, initial=self.global_step, desc="training", unit="step",
                   disable=not self.is_main)  # fmt: skip
        cancelled = False
        try:
            while self.global_step < self.max_steps and not (self.global_step and self._learned()):
                loss = self.step()
                lr = self.lr_scheduler.get_last_lr()[0]
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                self.emit(TrainEvent("step", self.global_step, self.max_steps, loss=loss, lr=lr))
                stop = self._stop_requested(should_stop) and self.global_step < self.max_steps
                if self.global_step % cfg.validation_steps == 0 and not self.done:
                    self.validate()  # first, so that a checkpoint of this step holds its scores
                learned = self._learned() and not self.done
                if (cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0) or stop:
                    self.checkpoint()
                if stop:
                    cancelled = True
                    logger.info("stopped on request at step %d", self.global_step)
                    break
                if learned:
                    break
        finally:
            bar.close()
        return self.finish(cancelled, started)

    @property
    def done(self) -> bool:
        return self.global_step >= self.max_steps

    def step(self) -> float:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; return the mean loss."""
        accelerator, accum = self.accelerator, self.cfg.gradient_accumulation_steps
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(accum):
            with contextlib.ExitStack() as stack:
                if micro != accum - 1:  # synchronise gradients on the last micro-batch only
                    for m in self.wrapped.values():
                        stack.enter_context(accelerator.no_sync(m))
                with accelerator.autocast():
                    loss = micro_batch_loss(self.run, self.global_step * accum + micro)
                with record_function(PHASE_BACKWARD):
                    accelerator.backward(loss / accum)
            step_loss += loss.detach().float() / accum
        with record_function(PHASE_CHECKS):
            mean_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            self._stop_non_finite(mean_loss)
        with record_function(PHASE_OPTIMIZER):
            if self.cfg.max_grad_norm:
                accelerator.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        # A finite loss can still come with a step that broke the weights (a huge learning rate, an overflow):
        # check them before this step counts, so that every checkpoint written after it holds finite weights.
        with record_function(PHASE_CHECKS):
            finite = bool(torch.isfinite(torch.stack(torch._foreach_norm(self.params))).all())
        if not finite:
            self._stop_non_finite(mean_loss, "adapter weights became NaN or infinite")
        self.global_step += 1
        self.run.losses.append(mean_loss)
        accelerator.log({"loss": mean_loss, "lr": self.lr_scheduler.get_last_lr()[0]}, step=self.global_step)
        return mean_loss

    def _stop_non_finite(self, loss: float, what: str | None = None) -> None:
        last = str(self.last_checkpoint) if self.last_checkpoint else None
        error = NonFiniteLossError(self.global_step + 1, loss, last, what)
        self.emit(TrainEvent("done", self.global_step, self.max_steps, loss=loss, message=str(error)))
        raise error

    def _stop_requested(self, should_stop: Callable[[], bool] | None) -> bool:
        """The stop flag of the main process, agreed by every process."""
        return self._agreed(bool(should_stop()) if (should_stop is not None and self.is_main) else False)

    def _learned(self) -> bool:
        """--stop_when_learned's verdict (made on the main process at a validation), agreed by every process."""
        return self._agreed(self.learned is not None and self.is_main)

    def _agreed(self, flag: bool) -> bool:
        if self.accelerator.num_processes > 1:
            value = torch.tensor(float(flag), device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(value, reduction="sum").item() > 0)
        return flag

    # ---- checkpoint and validation ----------------------------------------------------------------------

    def checkpoint(self) -> Path:
        """Write `checkpoint-<step>` (every process takes part) and prune old ones."""
        run = self.run
        state = {
            "seed": run.seed,
            "losses": run.losses,
            "quality": self.quality,
            "signals": self.signals,
            "best_step": self.best[0] if self.best else None,
            "max_train_steps": self.max_steps,
            "fingerprint": self.fingerprint,
            "architecture": run.comps.arch,
        }
        path = ckpt.save_checkpoint(
            self.out,
            self.global_step,
            models=self.trained,
            optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler,
            state=state,
            noise_generator=run.noise_generator,
            is_main=self.is_main,
            rank=self.accelerator.process_index,
            barrier=self.accelerator.wait_for_everyone,
            best_adapter=self.best[1] if self.best else None,
        )
        if self.is_main:
            ckpt.prune_checkpoints(self.out, self.cfg.checkpoints_total_limit)
            self.emit(TrainEvent("checkpoint", self.global_step, self.max_steps, message=str(path)))
        self.last_checkpoint = path
        return path

    def _validating(self) -> bool:
        return bool(self.cfg.validation_prompt) or self.scorer is not None

    @contextlib.contextmanager
    def _eval_mode(self) -> Any:
        """The unwrapped models in eval mode (dropout off, a schedule-free optimizer's evaluation weights) for a
        measurement; training mode and weights again after."""
        found = [self.accelerator.unwrap_model(m) for m in (self.run.unet, *self.run.text_encoders)]
        for m in found:
            m.eval()
        try:
            with evaluation_weights(self.optimizer, self.params):
                yield found
        finally:
            for m in found:
                m.train()

    def validate(self) -> None:
        """Measure the learning signals; run the scorer, if any; sample the validation prompt, save a grid,
        log it (main process, once per step). Its wall time adds to ``validation_s``."""
        if not self.is_main or self.last_validated == self.global_step:
            return
        self.last_validated = self.global_step
        if not (self.cfg.signals or self._validating()):
            return  # nothing to measure: not even the switch to eval mode and back
        started = time.perf_counter()
        try:
            self._validate_now()
        finally:
            self.validation_s += time.perf_counter() - started

    def _validate_now(self) -> None:
        cfg, run = self.cfg, self.run
        with self._eval_mode() as (unet, *tes):
            if cfg.signals and self.probe is None:
                self._start_signals()
            if self.probe is not None:
                self._measure_signals()
            if self._validating():
                pipe = validation.build_pipeline(run.comps, unet, tes)
                merged = (
                    validation.adapters_merged([unet, *tes])
                    if cfg.merged_validation
                    else contextlib.nullcontext()
                )
                with merged, torch.no_grad(), self.accelerator.autocast():
                    self._draw_and_score(pipe)

    def _draw_and_score(self, pipe: Any) -> None:
        """Draw the scorer's images and the validation prompt's in shared pipeline calls; score and show them."""
        cfg = self.cfg
        scoring = self.scorer is not None and not any(q["step"] == self.global_step for q in self.quality)
        requests: dict[str, sampling.SampleRequest] = {}
        if scoring and hasattr(self.scorer, "request"):
            requests["score"] = self.scorer.request
        if cfg.validation_prompt:
            n = cfg.num_validation_images
            requests["sample"] = sampling.SampleRequest(
                (cfg.validation_prompt,) * n, tuple(self.run.seed + k for k in range(n)),
                cfg.validation_inference_steps, cfg.validation_guidance_scale,
                self.run.resolution, self.run.resolution,
            )  # fmt: skip
        drawn = dict(zip(requests, sampling.draw(pipe, list(requests.values()))))
        if scoring:
            self._record_scores(self.scorer.score(drawn["score"]) if "score" in drawn else self.scorer(pipe))
        if "sample" in drawn:
            self._show_samples(drawn["sample"])

    def _measure_signals(self, step: int | None = None) -> None:
        step = self.global_step if step is None else step
        if any(row["step"] == step for row in self.signals):
            return
        with self.accelerator.autocast():
            row = {"step": step, **self.probe.measure()}
        self.signals.append(row)
        if self.cfg.report_to == "tensorboard":
            values = {f"signals/{k}": v for k, v in row.items() if k != "step" and math.isfinite(v)}
            self.accelerator.log(values, step=step)
        text = signals.history_digest(self.signals)
        if step > 0:
            tqdm.write(f"step {step}: {text}")
        self.emit(TrainEvent("signals", step, self.max_steps, scores=dict(row), message=text))
        if self.cfg.stop_when_learned and step > 0:
            best = self.stop_rule.best(self.signals)
            if best is not None and best["step"] == self.global_step:
                self.best = (self.global_step, ckpt.trainable_state(self.trained))
            self.learned = self.stop_rule.reason(self.signals)
            if self.learned:
                tqdm.write(f"step {self.global_step}: subject learnt, stopping: {self.learned}")

    def _record_scores(self, raw: dict[str, Any]) -> None:
        scores = {k: float(v) for k, v in raw.items()}
        self.quality.append({"step": self.global_step, **scores})
        text = ", ".join(f"{k} {100 * v:.0f}%" for k, v in scores.items())
        tqdm.write(f"step {self.global_step}: {text}")
        self.emit(TrainEvent("scores", self.global_step, self.max_steps, scores=scores, message=text))

    def _show_samples(self, images: list[Any]) -> None:
        cfg, accelerator = self.cfg, self.accelerator
        self.last_grid = validation.save_grid(images, self.out, self.global_step)
        if cfg.report_to == "tensorboard":
            import numpy as np

            writer = accelerator.get_tracker("tensorboard", unwrap=True)
            frames = np.stack([np.asarray(im) for im in images])
            writer.add_images("validation", frames, self.global_step, dataformats="NHWC")
        self.emit(
            TrainEvent(
                "validation", self.global_step, self.max_steps, images=images, message=str(self.last_grid)
            )
        )

    # ---- finish -----------------------------------------------------------------------------------------

    def finish(self, cancelled: bool, started: float) -> TrainResult:
        """Final validation, adapter files, loss curve and model card; the summary line and result."""
        run, accelerator = self.run, self.accelerator
        accelerator.wait_for_everyone()
        final_loss = run.losses[-1] if run.losses else None
        files: dict[str, Path] = {}
        if self.global_step > 0:
            self.validate()
        set_mode(self.optimizer, training=False)  # the weights to write (schedule-free: the averaged point)
        if self.is_main and self.global_step > 0:
            files = self._write_outputs(final_loss)
        accelerator.wait_for_everyone()
        weights = files.get("moslora") or files.get("diffusers")
        window = run.losses[-min(len(run.losses), 10) :] if run.losses else []
        ending = "stopped" if cancelled else ("learnt" if self.learned else "finished")
        summary = (
            f"{ending}: {self.global_step}/{self.max_steps} steps "
            f"in {time.time() - started:.0f}s"
            + (f" (validation {self.validation_s:.1f}s)" if self.validation_s else "")
            + (
                f", loss {final_loss:.4f} (mean of last {len(window)}: {sum(window) / len(window):.4f})"
                if window
                else ""
            )
            + (f"; adapter: {weights}" if weights else "; no adapter written")
        )
        if self.is_main:
            tqdm.write(summary)
        self.emit(TrainEvent("done", self.global_step, self.max_steps, loss=final_loss, message=summary))
        return TrainResult(self.out, weights, self.global_step, cancelled, final_loss, files, self.learned,
                           self.kept_step if weights else None, self.validation_s)  # fmt: skip

    def _adapter_files(self, folder: Path, step: int, final_loss: float | None) -> dict[str, Path]:
        cfg, comps = self.cfg, self.run.comps
        return outputs.write_adapter_files(
            folder,
            cfg.adapter,
            {k: self.accelerator.unwrap_model(m) for k, m in self.wrapped.items()},
            comps.adapter_configs,
            base_model_metadata(cfg, comps),
            training_metadata(cfg, step, final_loss, self.run.seed),
            comps.arch,
            cfg.export_kohya,
            unet_config=dict(comps.unet.config),
        )

    def _write_outputs(self, final_loss: float | None) -> dict[str, Path]:
        cfg = self.cfg
        kept_step = self.global_step
        last: dict[str, Path] = {}
        if cfg.stop_when_learned and self.best is not None and self.best[0] != self.global_step:
            # the last step's adapter goes to last/, the best validation's becomes the run's adapter
            last = self._adapter_files(self.out / run_folder.LAST_ADAPTER_DIR, self.global_step, final_loss)
            ckpt.load_trainable_state(self.trained, self.best[1], f"the adapter of step {self.best[0]}")
            kept_step = self.best[0]
            tqdm.write(
                f"kept the adapter of step {kept_step} (the best subject fit); step {self.global_step}'s is in "
                f"{self.out / run_folder.LAST_ADAPTER_DIR}"
            )
        files = self._adapter_files(self.out, kept_step, final_loss)
        self.kept_step = kept_step
        files.update({f"last_{k}": v for k, v in last.items()})
        if self.signals:
            files.update(
                outputs.write_signals(self.signals, self.out, kept_step if cfg.stop_when_learned else None)
            )
        curve = outputs.plot_loss_curve(self.run.losses, self.out / outputs.LOSS_CURVE_NAME)
        if curve is not None:
            files["loss_curve"] = curve
        if self.quality:
            files.update(outputs.write_quality(self.quality, self.out))
        if self.last_grid is not None:
            files["samples"] = self.last_grid
        adapter_files = {k: v for k, v in files.items() if k in ("moslora", "diffusers", "kohya")}
        note = None
        if self.learned:
            note = f"Stopped at step {self.global_step} of {self.max_steps} by `--stop_when_learned`: {self.learned}."
            if last:
                note += (f" The adapter files are step {kept_step}'s (the best subject fit); step "
                         f"{self.global_step}'s are in `{run_folder.LAST_ADAPTER_DIR}/`.")  # fmt: skip
        card = render_model_card(
            cfg, self.run.comps.arch, adapter_files, self.global_step, final_loss, self.last_grid, curve,
            files.get("quality_curve"), files.get("signals_curve"), note,
        )  # fmt: skip
        files["model_card"] = write_model_card(card, self.out)
        return files
