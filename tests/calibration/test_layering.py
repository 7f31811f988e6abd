"""The calibration package sits beside the engine: it never imports the engine, pruner or methods."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "hf_calibprune"
FORBIDDEN = ("engine", "pruner", "methods", "config", "report", "hub", "evaluation", "recovery", "integrations", "cli")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    depth = len(path.relative_to(PACKAGE).parts) - 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            else:
                parts = list(path.relative_to(PACKAGE).parts[:depth])
                base = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                names.append(".".join(["hf_calibprune", *base, *(node.module.split(".") if node.module else [])]))
    return names


def test_calibration_imports_no_higher_layer():
    for path in sorted((PACKAGE / "calibration").rglob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "hf_calibprune" and len(parts) > 1:
                assert parts[1] not in FORBIDDEN, f"{path.relative_to(PACKAGE)} imports {name}"
