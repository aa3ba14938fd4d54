"""Command line of the web UI: parse arguments, load the base model, build the app, launch it.

python app/app.py --base_model path/or/hub-id --adapters_dir adapters [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..process_env import prepare_entry_point
from ..quiet import quiet_entry_point

__all__ = ["build_parser", "default_base_model", "create_app", "launch", "main"]

logger = logging.getLogger(__name__)


def default_base_model() -> str | None:
    """The bundled toy-world base model, when this install ships its files."""
    from .. import toyworld

    path = toyworld.base_model_path()
    return str(path) if (path / "model_index.json").is_file() else None


def _auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("--auth must look like user:password")
    return user, password


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moslora-diffusion app",
        description="Web UI: generate with MoSLoRA / LoRA adapters, compare strengths, train new adapters.",
    )
    p.add_argument(
        "--base_model",
        "--base-model",
        default=None,
        help="diffusers pipeline folder, hub id or single-file .safetensors checkpoint "
        "(default: the bundled toy-world base model)",
    )
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="DIR",
        help="for single-file checkpoints: a local diffusers folder whose configs and tokenizers to use, one "
        "per architecture (repeat for sd1 / sd2 / sdxl); without it diffusers' default repository from the hub "
        "cache",
    )
    p.add_argument(
        "--models_dir",
        "--models-dir",
        default=None,
        help="folder of diffusers model folders and single-file .safetensors checkpoints offered in the "
        "base-model menu (the bundled toy model always is)",
    )
    p.add_argument(
        "--adapters_dir",
        "--adapters-dir",
        default="adapters",
        help="folder of .safetensors adapters (default: ./adapters)",
    )
    p.add_argument(
        "--output_dir",
        "--output-dir",
        default="outputs",
        help="where generated PNGs are written (default: ./outputs)",
    )
    p.add_argument(
        "--work_dir",
        "--work-dir",
        default=None,
        help="training jobs' data and outputs (default: a temp folder)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--auth", type=_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--share", action="store_true", help="open a public gradio.live link (off by default)")
    p.add_argument(
        "--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, mps (default: auto)"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument(
        "--queue_size", "--queue-size", type=int, default=16, help="requests that may wait; more are refused"
    )
    p.add_argument("--max_size", "--max-size", type=int, default=2048, help="largest width/height in pixels")
    p.add_argument("--max_images", "--max-images", type=int, default=8, help="most images per request")
    p.add_argument("--no_train", "--no-train", action="store_true", help="hide the Train tab")
    return p


def create_app(args: argparse.Namespace):
    """Load the model and build the Blocks app; returns (demo, engine, jobs)."""
    from ..base_models import config_folders
    from ..errors import BaseModelError
    from .engine import Engine, list_models
    from .jobs import TrainingJobs
    from .requests import Limits
    from .ui import build_ui

    base = args.base_model or default_base_model()
    if not base:
        raise SystemExit("no --base_model given and the bundled toy-world base model is not installed")
    if args.queue_size < 1 or args.max_images < 1 or args.max_size % 8 or args.max_size < 32:
        raise SystemExit("--queue_size and --max_images must be >= 1; --max_size a multiple of 8, >= 32")
    try:
        configs = config_folders(args.config)
    except BaseModelError as exc:
        raise SystemExit(str(exc)) from None
    adapters_dir = Path(args.adapters_dir)
    adapters_dir.mkdir(parents=True, exist_ok=True)
    limits = Limits(max_size=args.max_size, max_images=args.max_images)
    engine = Engine.from_pretrained(
        base,
        adapters_dir,
        args.output_dir,
        args.device,
        args.dtype,
        limits,
        models=list_models(args.models_dir),
        configs=configs,
    )
    jobs = None
    if not args.no_train:
        work = args.work_dir or tempfile.mkdtemp(prefix="moslora-webui-train-")
        jobs = TrainingJobs(base, adapters_dir, work, sampler_defaults=engine.defaults, configs=configs)
    demo = build_ui(engine, jobs)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    return demo, engine, jobs


def launch(demo, args: argparse.Namespace, engine, prevent_thread_lock: bool = False):
    """Start the server as the arguments say (loopback and no share link unless asked)."""
    from .api import add_get_routes
    from .tab_adapters import MAX_ADAPTER_UPLOAD_BYTES

    Path(engine.output_dir).mkdir(parents=True, exist_ok=True)
    started = demo.launch(
        server_name=args.host,
        server_port=args.port,
        auth=args.auth,
        share=bool(args.share),
        allowed_paths=[str(Path(engine.output_dir).resolve())],
        # the largest upload is an adapter file; images are held to their own, smaller limit when read
        max_file_size=MAX_ADAPTER_UPLOAD_BYTES,
        prevent_thread_lock=True,  # the GET routes are added to the running app; then we block if asked
        # Our handlers turn every failure into a short gr.Error (never a traceback); what remains are Gradio's
        # own refusals (an upload it blocked, a file type it rejects), whose message the client must see
        # instead of {"error": null}.
        show_error=True,
        inbrowser=False,
        quiet=prevent_thread_lock,
    )
    add_get_routes(demo, engine)  # needs the app the launch built
    if not prevent_thread_lock:
        demo.block_thread()
    return started


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python app/app.py`` and ``moslora-diffusion app``."""
    prepare_entry_point()  # before the app imports torch
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_entry_point()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = build_parser().parse_args(argv)
    demo, engine, _ = create_app(args)
    launch(demo, args, engine)
    return 0
