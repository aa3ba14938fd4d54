"""Keep the house in order (issue "The house in order"): each per-architecture fact and every atomic write has
one home, private library APIs go through `compat`, and no module or function grows past its size limit."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moslora_diffusion"
SOURCES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_strings(path: Path) -> str:
    """The string literals of a module's code, one per line (docstrings left out)."""
    tree = ast.parse(_text(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return "\n".join(
        repr(node.value)[1:-1].replace("\\'", "'")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    )


# For architecture facts only string literals count; for the others, the code as written.
_LITERALS_ONLY = {"architectures.py"}


# Telltale spellings of a fact -> the one module allowed to spell it.
OWNERS = {
    "architectures.py": [
        r"StableDiffusionXLPipeline",
        r"^StableDiffusionPipeline$",
        r"lora_te1_",
        r"^lora_te_$",
        r"sdxl_base_v1-0",
        r"^sd_v[12]$",
        r"stable-diffusion-v[12]\S*/lora",
        r"stable-diffusion-xl-v1-base",
        r"stabilityai/stable-diffusion",
        r"stable-diffusion-v1-5/",
        r"^cond_stage_model\.(transformer|model)\.$",
        r"conditioner\.embedders\.",
    ],
    "durable.py": [r"os\.replace\(", r"mkstemp\(", r"\.savefig\("],
    "compat.py": [r"_register_custom_module", r"_reset_state\b"],
    "errors.py": [r"^class \w+\((?:\w*Error|BusyError|MoSLoraError)\)"],
}


@pytest.mark.parametrize("owner", list(OWNERS))
def test_each_fact_is_spelled_only_in_its_module(owner):
    found = []
    for path in SOURCES:
        if path.name == owner:
            continue
        text = _code_strings(path) if owner in _LITERALS_ONLY else _text(path)
        for pattern in OWNERS[owner]:
            for match in re.finditer(pattern, text, re.MULTILINE):
                found.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not found, f"only {owner} may spell these:\n" + "\n".join(found)


def test_the_rules_see_what_they_guard():
    """The patterns match in their owners (a renamed fact would otherwise make the rule above vacuous)."""
    for owner, patterns in OWNERS.items():
        path = next(p for p in SOURCES if p.name == owner)
        text = _code_strings(path) if owner in _LITERALS_ONLY else _text(path)
        missing = [p for p in patterns if not re.search(p, text, re.MULTILINE)]
        assert not missing, f"{owner} no longer holds {missing}"


def test_no_module_over_the_size_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(_text(p).splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_the_size_limit():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(_text(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
