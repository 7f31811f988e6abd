"""Low layers never import high ones (see ../shared/STYLE.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_calibprune"

LAYER = {
    "errors": 0, "registry": 0, "version": 0, "records": 0, "_io": 0,
    "sparsity": 1, "methods": 2, "refinement": 2, "reconstruction": 2, "models": 3, "engine": 4, "calibration": 4,
    "config": 5, "report": 5, "pruner": 6, "structured_pruner": 6, "structured": 2,
    "hub": 7, "evaluation": 7, "recovery": 7, "integrations": 7, "study": 7,
    "cli": 8, "commands": 8, "__main__": 8,
}


def top_level(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported_modules(path: Path):
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package_parts[: len(package_parts) - node.level + 1])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield target[0]
            else:
                yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_calibprune."):
            yield node.module.split(".")[1]


FILES = [p for p in PACKAGE.rglob("*.py") if top_level(p) in LAYER]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_imports(path):
    own = LAYER[top_level(path)]
    for module in imported_modules(path):
        if module in LAYER and module != top_level(path):
            assert LAYER[module] <= own, f"{path.relative_to(PACKAGE)} (layer {own}) imports {module} (layer {LAYER[module]})"
            assert {top_level(path), module} != {"engine", "calibration"}, "engine and calibration stay apart"

