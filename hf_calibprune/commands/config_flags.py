"""Command-line flags and the docs table of :class:`~hf_calibprune.PruningConfig`, derived from the dataclass.

A field's flag is its name with hyphens (``min_expert_tokens`` → ``--min-expert-tokens``), its help is the
field's entry in the class docstring, its type comes from the annotation: numbers and strings take one value,
booleans take ``--name`` / ``--no-name``, lists repeat the flag, and dicts repeat a singular ``KEY=VALUE`` flag
(``method_options`` → ``--method-option block_size=64``, the value JSON-parsed). A new field is one edit of the
dataclass; as transformers' ``HfArgumentParser`` does, nothing is copied by hand into argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any

__all__ = ["add_config_flags", "config_overrides", "config_markdown_table", "field_docs", "write_config_docs"]

_ENTRY = re.compile(r"^ {8}(\w+) \(`([^`]*)`(?:, \*optional\*)?(?:, defaults to (.*?))?\):\s*(.*)$")


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """``field → (type as documented, description)`` from the ``Args:`` section of ``cls``'s docstring."""
    entries: dict[str, tuple[str, str | None, list[str]]] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        match = _ENTRY.match(line)
        if match:
            current = match.group(1)
            entries[current] = (match.group(2), match.group(3), [match.group(4).strip()])
        elif current and line.startswith(" " * 12) and line.strip():
            entries[current][2].append(line.strip())
        else:
            current = None
    return {
        name: (kind, " ".join(lines) + (f" Default: {default.strip('`')}." if default else ""))
        for name, (kind, default, lines) in entries.items()
    }


def _kind(field: dataclasses.Field) -> str:
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    annotation = annotation.replace(" ", "")
    if annotation.startswith("dict"):
        return "dict"
    if annotation.startswith("list") or annotation == "Any":
        return "list"
    for kind in ("bool", "int", "float"):
        if annotation in (kind, f"{kind}|None"):
            return kind
    return "str"


def _flag(field: dataclasses.Field) -> str:
    name = field.name[:-1] if _kind(field) == "dict" and field.name.endswith("s") else field.name
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (every default ``None``: given flags override)."""
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (override --config)")
    for field in dataclasses.fields(cls):
        kind = _kind(field)
        text = docs.get(field.name, ("", ""))[1].replace("``", "").replace("%", "%%")
        if kind == "bool":
            group.add_argument(_flag(field), dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind == "dict":
            group.add_argument(_flag(field), dest=field.name, action="append", metavar="KEY=VALUE", help=text)
        elif kind == "list":
            group.add_argument(_flag(field), dest=field.name, action="append", help=f"{text} Repeat for several.")
        else:
            group.add_argument(_flag(field), dest=field.name, type={"int": int, "float": float}.get(kind, str), help=text)


def _parse_option(flag: str, text: str) -> tuple[str, Any]:
    from ..errors import ConfigError

    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ConfigError(f"{flag} '{text}' must look like KEY=VALUE, e.g. block_size=64.")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def config_overrides(args: argparse.Namespace, cls: type, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a config dict) updated with every field flag given on the command line.

    A list field given once holds one value (``--calibration c4`` is the source ``"c4"``, given twice a mixture);
    a dict field's ``KEY=VALUE`` flags are merged into the base's dict.
    """
    data = dict(base)
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        kind = _kind(field)
        if kind == "dict":
            data[field.name] = {**data.get(field.name, {}), **dict(_parse_option(_flag(field), v) for v in value)}
        elif kind == "list" and field.type == "Any" and len(value) == 1:
            data[field.name] = value[0]
        else:
            data[field.name] = value
    return data


def config_markdown_table(cls: type) -> str:
    """A Markdown table of the fields of ``cls``: flag, type and description (docs/config.md holds it)."""
    docs = field_docs(cls)
    rows = ["| field | flag | type | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        kind, text = docs.get(field.name, ("", ""))
        flag = _flag(field) + (" / --no-" + field.name.replace("_", "-") if _kind(field) == "bool" else "")
        text, kind = text.replace("``", "`").replace("|", "\\|"), kind.replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{flag}` | `{kind}` | {text} |")
    return "\n".join(rows) + "\n"


_CONFIG_DOCS_HEAD = """# `PruningConfig` fields

Generated from the dataclass's docstring by `make docs` (`hf_calibprune.commands.config_flags`); every field is
also a flag of `hf-calibprune prune`, and flags override a `--config` file. A test fails when this page is stale.

"""


def config_docs() -> str:
    """The text of docs/config.md: the :class:`~hf_calibprune.PruningConfig` table."""
    from ..config import PruningConfig

    return _CONFIG_DOCS_HEAD + config_markdown_table(PruningConfig)


def write_config_docs(path: str) -> None:
    """Write :func:`config_docs` to ``path``."""
    from pathlib import Path

    Path(path).write_text(config_docs(), encoding="utf-8")
