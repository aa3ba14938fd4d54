"""The ``moslora-diffusion`` command line.

Each subcommand is a function registered with :func:`subcommand`, which also names a function adding
its arguments. To add one::

    def _my_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("path")

    @subcommand("mycmd", "one-line help", _my_args)
    def run_mycmd(args: argparse.Namespace) -> int:
        ...
        return 0

Known errors (bad files, mismatched adapters, bad arguments) print ``error: ...`` and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import MoSLoraError, RequestError
from .process_env import prepare_entry_point
from .quiet import quiet_entry_point


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False  # unknown arguments go to `args.extra` (for commands wrapping other parsers)


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None], passthrough: bool = False
):
    """Register the decorated ``run(args) -> exit code`` function as subcommand ``name``.

    With ``passthrough``, arguments the subcommand does not declare are left in ``args.extra``.
    """

    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name, help, add_arguments, run, passthrough)
        return run

    return register


# ------------------------------------------------------------------------------------------- export
def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="native MoSLoRA file, or a directory holding moslora_weights.safetensors")
    parser.add_argument("--format", required=True, choices=("diffusers", "kohya"), help="export format")
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        help="output .safetensors file, or a directory (pytorch_lora_weights.safetensors / lora_kohya.safetensors)",
    )
    parser.add_argument(
        "--architecture",
        choices=("sd1", "sd2", "sdxl"),
        help="base model family, when the file's base_model metadata does not say (kohya naming depends on it)",
    )
    parser.add_argument(
        "--unet_config",
        "--unet-config",
        help="SDXL only: the base model's UNet config.json (or model folder) for the SGM block layout; "
        "default: the file's base_model metadata, else the SDXL 1.0 layout",
    )
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="cast the exported tensors")
    parser.add_argument(
        "--force", action="store_true", help="replace an existing output file (never the source)"
    )


def _read_unet_config(value: str) -> dict:
    path = Path(value)
    for candidate in (path, path / "config.json", path / "unet" / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except json.JSONDecodeError as exc:
                raise MoSLoraError(f"{candidate}: not a valid JSON UNet config ({exc})") from None
    raise MoSLoraError(f"{value}: no UNet config.json found there")


@subcommand(
    "export", "fold a MoSLoRA file into an exact plain LoRA (diffusers or kohya naming)", _export_args
)
def run_export(args: argparse.Namespace) -> int:
    from .formats import export_adapter, kohya_unsupported_modules, load_moslora_file

    unet_config = _read_unet_config(args.unet_config) if args.unet_config else None
    adapter = load_moslora_file(args.src)
    out = export_adapter(
        adapter,
        args.output,
        args.format,
        architecture=args.architecture,
        unet_config=unet_config,
        dtype=args.dtype,
        overwrite=args.force,
    )
    print(f"wrote {args.format} LoRA to {out}")
    if args.format == "kohya":
        _note_kohya_gaps(kohya_unsupported_modules(adapter))
    return 0


def _note_kohya_gaps(modules: list[str]) -> None:
    if modules:
        print(
            f"note: {len(modules)} module(s) ({', '.join(modules[:4])}{', ...' if len(modules) > 4 else ''}) sit "
            "outside the blocks kohya-ss/sd-scripts adapts: its loader ignores them, while ComfyUI, "
            "AUTOMATIC1111 and diffusers apply them. Train without time/add-embedding targets for sd-scripts.",
            file=sys.stderr,
        )


# ------------------------------------------------------------------------------------ resize, merge
def _plain_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("diffusers", "kohya"),
        help="output format; default: kohya when an input is a kohya file, else diffusers",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output (never a source)")


def _resize_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="adapter file: native MoSLoRA, diffusers/PEFT LoRA or kohya LoRA")
    parser.add_argument("--rank", type=int, required=True, help="the new rank (with --dynamic: the most)")
    parser.add_argument(
        "--dynamic",
        type=float,
        metavar="SHARE",
        help="per module, the smallest rank keeping this Frobenius share of its delta (e.g. 0.95)",
    )
    parser.add_argument("--output", "-o", required=True, help="output .safetensors file or directory")
    _plain_output_args(parser)


@subcommand(
    "resize", "shrink an adapter's rank by SVD of each module's delta (prints the share kept)", _resize_args
)
def run_resize(args: argparse.Namespace) -> int:
    from .adapter_tools import resize_file

    out, report = resize_file(args.src, args.output, args.rank, share=args.dynamic, format=args.format,
                              overwrite=args.force)  # fmt: skip
    print(report.table())
    print(f"wrote {out}")
    return 0


def _merge_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help="adapter files (native, diffusers or kohya)")
    parser.add_argument("--weights", type=float, nargs="+", help="one weight per adapter; default 1 each")
    parser.add_argument("--output", "-o", required=True, help="output .safetensors file or directory")
    parser.add_argument(
        "--rank", type=int, help="resize the merged adapter to this rank (ranks add otherwise)"
    )
    parser.add_argument(
        "--dynamic", type=float, metavar="SHARE", help="with --rank: keep this Frobenius share"
    )
    parser.add_argument(
        "--base",
        help="fold the adapters into this base model (diffusers folder or single-file checkpoint) and write "
        "the merged model to --output: a .safetensors file in the checkpoint's original layout (single-file "
        "base), else a diffusers folder",
    )
    parser.add_argument("--config", help="with a single-file --base: its diffusers config folder")
    _plain_output_args(parser)


@subcommand(
    "merge", "add adapters into one plain LoRA (weighted), or into a base model's weights", _merge_args
)
def run_merge(args: argparse.Namespace) -> int:
    from .adapter_tools import merge_files, merge_into_model

    if args.base:
        if args.rank is not None or args.format:
            raise RequestError("--rank and --format are for adapter output; --base writes a model folder")
        out = merge_into_model(args.base, args.sources, args.weights, args.output, config=args.config,
                               overwrite=args.force)  # fmt: skip
        print(f"wrote the merged model to {out}")
        return 0
    if args.dynamic is not None and args.rank is None:
        raise RequestError("--dynamic needs --rank (the most a module may keep)")
    out, report = merge_files(args.sources, args.weights, args.output, rank=args.rank, share=args.dynamic,
                              format=args.format, overwrite=args.force)  # fmt: skip
    if report is not None:
        print(report.table())
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------ inspect
def _inspect_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        help="adapter file (native MoSLoRA, diffusers/PEFT LoRA or kohya LoRA); a single-file base model is "
        "recognised and named as such",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


@subcommand(
    "inspect", "describe an adapter file: format, base model, ranks, sizes, training metadata", _inspect_args
)
def run_inspect(args: argparse.Namespace) -> int:
    from .errors import MoSLoraFormatError
    from .formats.inspect import describe_adapter_file, format_description

    try:
        info = describe_adapter_file(args.file)
    except MoSLoraFormatError:
        checkpoint = _base_checkpoint(args.file)
        if checkpoint is None:
            raise
        info = {
            "kind": "base model (single-file checkpoint)",
            "file": str(checkpoint.path),
            "architecture": checkpoint.architecture,
            "prediction_type": checkpoint.prediction_type,
            "use": "train with --pretrained_model_name_or_path FILE [--config DIR]; not an adapter",
        }
        text = "\n".join(f"{k}: {v}" for k, v in info.items())
        print(json.dumps(info, indent=2) if args.json else text)
        return 0
    print(json.dumps(info, indent=2, default=str) if args.json else format_description(info))
    return 0


def _base_checkpoint(path: str):
    """The file as a single-file base model, or None when it is not one either."""
    from .base_models import inspect_checkpoint
    from .errors import BaseModelError

    try:
        return inspect_checkpoint(path)
    except BaseModelError:
        return None


# ----------------------------------------------------------------------------------------- quickstart
def _quickstart_args(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Other arguments are train_dreambooth_moslora.py flags (default: the toy world, outputs/quickstart)."
    )


@subcommand(
    "quickstart",
    "train the bundled example subject on the bundled base model and write a with/without-adapter grid",
    _quickstart_args,
    passthrough=True,
)
def run_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import run_quickstart as _run

    _run(args.extra)
    return 0


# -------------------------------------------------------------------------------------- eval-toyworld
def _eval_toyworld_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rank", type=int, default=8, help="rank of MoSLoRA and LoRA (LoRA also at 2x rank)")
    parser.add_argument("--seeds", type=int, default=10, help="training seeds per method")
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="default: the subject's own setting"
    )
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--output_dir", default="outputs/eval-toyworld", help="adapters, results.json, plot")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="replace a previous study in --output_dir"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="re-check in about 10 minutes on 2 cores: MoSLoRA vs LoRA at equal rank, 3 seeds, the full recipe",
    )
    parser.add_argument("--smoke", action="store_true", help="a run for tests: 2 seeds, 4 steps, 1 image")
    parser.add_argument(
        "--methods", default="moslora,lora,lora-2r", help="comma-separated: moslora, lora, lora-2r"
    )
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the subject's recipe")
    parser.add_argument("--mixer_init", choices=("kaiming", "orthogonal"), default=None)
    parser.add_argument("--unet_targets", default=None, help="default: the subject's recipe")
    parser.add_argument("--train_text_encoder", action="store_true")
    parser.add_argument(
        "--train_arg",
        action="append",
        metavar="FLAG=VALUE",
        help="any other training flag for every run, e.g. --train_arg max_train_steps=900 "
        "--train_arg with_prior_preservation (repeatable)",
    )
    parser.add_argument("--curves", action="store_true", help="record learning curves (the toy scorer)")
    parser.add_argument(
        "--subject",
        choices=("circle", "star"),
        default="circle",
        help="bundled subject: circle (a new design on a known outline) or star (a new outline)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="training processes at a time (1 torch thread each; at most the cores)",
    )
    parser.add_argument(
        "--docs", metavar="PATH", default=None,
        help="also append a dated section (command, table, figures) to this markdown file, e.g. docs/quality.md",
    )  # fmt: skip


@subcommand(
    "eval-toyworld",
    "DreamBench-style yardstick: train MoSLoRA / LoRA / LoRA 2r on the toy subject over seeds and score them",
    _eval_toyworld_args,
)
def run_eval_toyworld(args: argparse.Namespace) -> int:
    from .yardstick.cli import run_cli

    return run_cli(args)


# ---------------------------------------------------------------------------------- compare-toyworld
def _compare_toyworld_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_a", help="an eval-toyworld output folder (or its results.json): side A")
    parser.add_argument("study_b", help="the study for side B (may be the same folder as A)")
    parser.add_argument(
        "--method_a",
        default=None,
        help="A's method: a label ('LoRA r=16') or moslora / lora / lora-2r; default: A's first",
    )
    parser.add_argument("--method_b", default=None, help="B's method, likewise; default: B's first")
    parser.add_argument(
        "--docs",
        metavar="PATH",
        default=None,
        help="also append the table, with this command, to this markdown file",
    )


@subcommand(
    "compare-toyworld",
    "pair two eval-toyworld studies seed by seed: each side's scores and the difference A − B with its 95%% CI",
    _compare_toyworld_args,
)
def run_compare_toyworld(args: argparse.Namespace) -> int:
    from .yardstick.pairing import run_cli as _run

    return _run(args)


# ------------------------------------------------------------------------------------------------ app
class _AppHelp(argparse.RawDescriptionHelpFormatter):
    """`app --help` shows the web UI's own flags (imported only when help is asked for)."""

    def format_help(self) -> str:
        from .webui.server import build_parser as web_ui_parser

        return web_ui_parser().format_help()


def _app_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _AppHelp


@subcommand("app", "start the Gradio web UI (generate, compare, train)", _app_args, passthrough=True)
def run_app(args: argparse.Namespace) -> int:
    from .webui import main as webui_main

    return int(webui_main(args.extra) or 0)


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moslora-diffusion", description="MoSLoRA adapters for Stable Diffusion (SD 1.x/2.x, SDXL)."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in SUBCOMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prepare_entry_point()  # before any subcommand imports torch
    quiet_entry_point()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not SUBCOMMANDS[args.command].passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args._run(args) or 0)
    except (MoSLoraError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
