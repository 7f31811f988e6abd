"""`CalibrationConfig`: which calibration data to use, in which format, as a JSON-able value."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Union

from ..errors import CalibrationError, ConfigError
from ..registry import suggest
from ..version import __version__

__all__ = [
    "CalibrationConfig",
    "CalibrationConfigError",
    "Component",
    "FORMATS",
    "DATA_EXTENSIONS",
    "parse_spec",
    "is_source_spec",
]

logger = logging.getLogger(__name__)

#: Every format a source can be rendered in (see docs/calibration.md).
FORMATS: tuple[str, ...] = ("plain", "zero", "single", "icl", "cot")

#: File name endings read as local data files.
DATA_EXTENSIONS: tuple[str, ...] = (
    ".jsonl",
    ".json",
    ".jsonl.gz",
    ".json.gz",
    ".txt",
    ".raw",
    ".tsv",
    ".csv",
    ".parquet",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")

DataFiles = Union[str, list[str], dict[str, Union[str, list[str]]]]


class CalibrationConfigError(ConfigError, CalibrationError):
    """An invalid calibration value: both a :class:`ConfigError` and a :class:`CalibrationError`."""


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"name:format"`` into ``(name, format)``; ``format`` is `None` when absent.

    Only a suffix that is a known format is split off, so paths and Hub ids with colons survive.
    """
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail in FORMATS:
        return head, tail
    if sep and head and "/" not in tail and "\\" not in tail and not tail.isdigit() and tail:
        # Looks like "name:something" with an unknown format.
        if not os.path.exists(spec):
            raise CalibrationConfigError(
                f"Unknown calibration format '{tail}' in '{spec}'.{suggest(tail, FORMATS)} "
                f"Known formats: {', '.join(FORMATS)}."
            )
    return spec, None


def _looks_like_path(name: str) -> bool:
    lowered = name.lower()
    return (
        os.path.exists(name)
        or lowered.endswith(DATA_EXTENSIONS)
        or name.startswith((".", "/", "~"))
        or os.sep in name and not _HUB_ID.match(name)
    )


def source_kind_of(name: str) -> str:
    """Return ``"registered"``, ``"path"`` or ``"hub"`` for a source name, or raise for an unknown one."""
    from .sources import SOURCES, make_source
    from .sources._language import split_language

    if name in SOURCES:
        return "registered"
    base, language = split_language(name)
    if language is not None and base in SOURCES:
        try:
            make_source(name)  # checks that the source takes a language and the code looks like one
        except CalibrationError as error:
            raise CalibrationConfigError(str(error)) from None
        return "registered"
    if _looks_like_path(name):
        return "path"
    if _HUB_ID.match(name):
        return "hub"
    known = ", ".join(SOURCES.names())
    raise CalibrationConfigError(
        f"Unknown calibration source '{name}'.{suggest(name, SOURCES.names())} Known sources: {known}. "
        "A local file (.jsonl/.json/.txt/.tsv/.csv/.parquet), a local dataset directory or a Hub dataset id "
        "('owner/name') is also accepted."
    )


def is_source_spec(value: str) -> bool:
    """Whether ``value`` reads as a source spec (registered name[:format], existing path or Hub id)."""
    try:
        name, _ = parse_spec(value)
        source_kind_of(name)
    except CalibrationError:
        return False
    return True


@dataclass(frozen=True)
class Component:
    """One entry of a (possibly single-source) mixture after validation.

    Args:
        name (`str`): registered source name, local path or Hub id.
        weight (`float`): share of ``num_samples``.
        format (`str`): the requested format (from ``"name:format"`` or the config's default).
        explicit_format (`bool`): whether the format was spelled on this entry (``"gsm8k:icl"``).
        kind (`str`): ``"registered"``, ``"path"`` or ``"hub"``.
    """

    name: str
    weight: float
    format: str
    explicit_format: bool
    kind: str


@dataclass(frozen=True)
class CalibrationConfig:
    """Which calibration data to build, validated at construction and round-tripping to JSON.

    Args:
        sources (`str` or `dict[str, float]` or `list[str]`, *optional*, defaults to `"self"`):
            A registered source name (``"gsm8k"``, ``"c4"``, see ``SOURCES``), optionally with a format
            (``"gsm8k:icl"``), a local file or dataset directory, a Hub dataset id, or a mixture
            ``{name: weight}`` whose weights sum to 1 (a list means equal weights).
        format (`str`, *optional*, defaults to `"plain"`):
            One of ``FORMATS``: ``plain`` (documents, or solved examples concatenated for task sources),
            ``zero`` (prompt without answer), ``single`` (one solved example), ``icl`` (solved examples
            concatenated), ``cot`` (``icl`` with worked rationales). Applies to every entry that does not
            spell its own and that supports it; pre-training and synthetic sources always use ``plain``.
        shots (`int`, *optional*):
            `None` concatenates examples past ``seq_len`` and cuts a random window (the study's
            "concat"); ``k`` puts exactly ``k`` examples in each sample, right-padded.
        num_samples (`int`, *optional*): number of sequences; `None` inherits the caller's value.
        seq_len (`int`, *optional*): tokens per sequence; `None` inherits the caller's value.
        seed (`int`, *optional*): sampling seed; `None` inherits the caller's value.
        data_files (`str` or `list[str]` or `dict[str, str | list[str]]`, *optional*):
            Local files in the source's raw schema; a dict maps source names to files in a mixture.
        data_dir (`str`, *optional*):
            A local mirror laid out as ``<data_dir>/<source name>/<files>``. Defaults to
            ``$HF_CALIBPRUNE_DATA_DIR``.
        text_field (`str`, *optional*): column holding the text of a local file or Hub dataset
            (defaults to ``"text"``).
        template (`str`, *optional*): ``str.format`` template over the columns of each row, e.g.
            ``"Q: {question}\\nA: {answer}"``, used instead of ``text_field``.
        revision (`str` or `dict[str, str]`, *optional*): Hub revision override (per source in a dict).
    """

    sources: str | dict[str, float] | list[str] = "self"
    format: str = "plain"
    shots: int | None = None
    num_samples: int | None = None
    seq_len: int | None = None
    seed: int | None = None
    data_files: DataFiles | None = None
    data_dir: str | None = None
    text_field: str | None = None
    template: str | None = None
    revision: str | dict[str, str] | None = None
    components: tuple[Component, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sources = self.sources
        if isinstance(sources, (list, tuple)):
            if not sources:
                raise CalibrationConfigError("`sources` is an empty list; name at least one source, e.g. 'c4'.")
            if len(set(sources)) != len(sources):
                raise CalibrationConfigError(f"`sources` lists a source twice: {list(sources)}.")
            sources = {str(name): 1.0 / len(sources) for name in sources}
            object.__setattr__(self, "sources", sources)
        if isinstance(sources, os.PathLike):
            sources = os.fspath(sources)
            object.__setattr__(self, "sources", sources)
        if isinstance(sources, dict):
            sources = dict(sources)
            object.__setattr__(self, "sources", sources)
        elif not isinstance(sources, str):
            raise CalibrationConfigError(
                f"`sources` must be a source name, a list of names or a dict name -> weight, "
                f"not {type(sources).__name__}."
            )
        if self.format not in FORMATS:
            raise CalibrationConfigError(
                f"Unknown calibration format '{self.format}'.{suggest(str(self.format), FORMATS)} "
                f"Known formats: {', '.join(FORMATS)}."
            )
        if self.shots is not None and (isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0):
            raise CalibrationConfigError(
                f"`shots={self.shots!r}` must be None (concatenate examples past seq_len) or an integer >= 0."
            )
        for name in ("num_samples", "seq_len"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CalibrationConfigError(f"`{name}={value!r}` must be a positive integer or None (inherit).")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise CalibrationConfigError(f"`seed={self.seed!r}` must be an integer or None (inherit).")
        if self.text_field is not None and not self.text_field:
            raise CalibrationConfigError("`text_field` is empty; name the column that holds the text, e.g. 'text'.")
        if self.template is not None:
            _check_template_syntax(self.template)
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        object.__setattr__(self, "components", self._validate_components())
        self._validate_overrides()

    # ------------------------------------------------------------------------------------------------
    def _validate_components(self) -> tuple[Component, ...]:
        from .sources import source_class_for

        if isinstance(self.sources, str):
            entries = {self.sources: 1.0}
        else:
            entries = self.sources
            if not entries:
                raise CalibrationConfigError("`sources` is an empty dict; give name -> weight, e.g. {'c4': 1.0}.")
            for name, weight in entries.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                    raise CalibrationConfigError(f"Weight of source '{name}' is {weight!r}; use a number in (0, 1].")
                if weight <= 0:
                    raise CalibrationConfigError(
                        f"Weight of source '{name}' is {weight}; weights must be > 0 (drop the source instead)."
                    )
            total = float(sum(entries.values()))
            if abs(total - 1.0) > 1e-6:
                fixed = {name: round(weight / total, 6) for name, weight in entries.items()}
                raise CalibrationConfigError(
                    f"Mixture weights sum to {total:g}, not 1: {dict(entries)}. Normalize them, e.g. {fixed}."
                )
        components = []
        for spec, weight in entries.items():
            if not isinstance(spec, str) or not spec:
                raise CalibrationConfigError(f"Source names must be non-empty strings, not {spec!r}.")
            name, fmt = parse_spec(spec)
            kind = source_kind_of(name)
            explicit = fmt is not None
            fmt = fmt if fmt is not None else self.format
            components.append(Component(name=name, weight=float(weight), format=fmt, explicit_format=explicit, kind=kind))
        names = [c.name for c in components]
        if len(set(names)) != len(names) and len({(c.name, c.format) for c in components}) != len(components):
            raise CalibrationConfigError(f"`sources` lists the same source and format twice: {names}.")
        # Format support is checked against each source class (imports only that small module).
        supported_any = False
        cot_missing = []
        for component in components:
            cls = source_class_for(component)
            formats = cls.supported_formats(template=self.template is not None)
            if component.format == "cot" and cls.kind in ("task", "custom") and "cot" not in formats:
                cot_missing.append(component.name)
                supported_any = True
            elif component.format in formats:
                supported_any = True
            elif component.explicit_format:
                raise _unsupported_format(component.name, component.format, cls)
        if not supported_any:
            first = components[0]
            raise _unsupported_format(first.name, first.format, source_class_for(first))
        if cot_missing:
            from .sources import sources_with_rationales

            raise CalibrationConfigError(
                f"Format 'cot' needs worked rationales, and {', '.join(repr(n) for n in cot_missing)} "
                f"{'has' if len(cot_missing) == 1 else 'have'} none. Sources with rationales: "
                f"{', '.join(sources_with_rationales())}. Use format 'icl' for the others "
                "(e.g. {'gsm8k:cot': 0.5, 'boolq:icl': 0.5})."
            )
        for component in components:
            fmt = component.format
            cls = source_class_for(component)
            if fmt not in cls.supported_formats(template=self.template is not None):
                continue
            _check_shots(fmt, self.shots, component.name)
        return tuple(components)

    def _validate_overrides(self) -> None:
        names = [c.name for c in self.components]
        specs = list(self.sources) if isinstance(self.sources, dict) else [self.sources]
        for label, value in (("data_files", self.data_files), ("revision", self.revision)):
            if isinstance(value, dict):
                for key in value:
                    if key not in names and key not in specs:
                        raise CalibrationConfigError(
                            f"`{label}` names source '{key}', which is not in `sources` ({', '.join(names)})."
                            f"{suggest(str(key), names)}"
                        )
            elif value is not None and len(names) > 1 and label == "data_files":
                raise CalibrationConfigError(
                    f"`data_files` for a mixture must be a dict source name -> files, e.g. "
                    f"{{'{names[0]}': 'path/to/train.jsonl'}}."
                )
            elif value is not None and not isinstance(value, (str, list, tuple, os.PathLike)):
                raise CalibrationConfigError(f"`{label}` must be a string, a list or a dict, not {type(value).__name__}.")

    # ------------------------------------------------------------------------------------------------
    def files_for(self, component: Component) -> list[str] | None:
        """The local files given for ``component`` (or `None`)."""
        value = self.data_files
        if isinstance(value, dict):
            value = value.get(component.name, value.get(f"{component.name}:{component.format}"))
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)):
            return [os.fspath(value)]
        return [os.fspath(v) for v in value]

    def revision_for(self, component: Component) -> str | None:
        """The Hub revision override for ``component`` (or `None`)."""
        if isinstance(self.revision, dict):
            return self.revision.get(component.name)
        return self.revision

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_dict` turns back into an equal config."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "components":
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        out["hf_calibprune_version"] = __version__
        return out

    def to_json_string(self) -> str:
        """JSON with sorted keys and two-space indents."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CalibrationConfig":
        """Build from :meth:`to_dict` output. Unknown keys are an error, unless a newer version wrote them."""
        data = dict(data)
        written_by = data.pop("hf_calibprune_version", None)
        known = [f.name for f in fields(cls) if f.init]
        unknown = [key for key in data if key not in known]
        if unknown:
            if written_by is not None and _newer(written_by, __version__):
                logger.warning(
                    "Dropping calibration config keys %s written by hf_calibprune %s (this is %s).",
                    unknown,
                    written_by,
                    __version__,
                )
                for key in unknown:
                    data.pop(key)
            else:
                key = unknown[0]
                raise CalibrationConfigError(
                    f"Unknown calibration config key '{key}'.{suggest(key, known)} Known keys: {', '.join(known)}."
                )
        return cls(**data)

    @classmethod
    def from_json_string(cls, text: str) -> "CalibrationConfig":
        return cls.from_dict(json.loads(text))


def _newer(a: str, b: str) -> bool:
    def parts(version: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", version)[:3])

    try:
        return parts(a) > parts(b)
    except ValueError:
        return False


def _check_template_syntax(template: str) -> None:
    import string

    try:
        list(string.Formatter().parse(template))
    except ValueError as error:
        raise CalibrationConfigError(
            f"`template` {template!r} is not a valid str.format template ({error}); name columns in braces, "
            "e.g. 'Question: {question}\\nAnswer: {answer}', and double literal braces ('{{')."
        ) from None


def _check_shots(fmt: str, shots: int | None, name: str) -> None:
    if shots is None:
        return
    if fmt == "zero" and shots not in (0, 1):
        raise CalibrationConfigError(
            f"Format 'zero' puts one unsolved prompt in each sample; `shots={shots}` does not apply to '{name}'. "
            "Use format 'icl' for solved examples."
        )
    if fmt == "single" and shots != 1:
        raise CalibrationConfigError(
            f"Format 'single' puts exactly one solved example in each sample; `shots={shots}` contradicts it. "
            "Use format 'icl' with shots=k for k examples."
        )
    if fmt in ("icl", "cot", "plain") and shots == 0:
        raise CalibrationConfigError(
            f"`shots=0` leaves no solved example for format '{fmt}'; use format 'zero' for prompts without "
            "answers, or shots >= 1."
        )


def _unsupported_format(name: str, fmt: str, cls: Any) -> CalibrationConfigError:
    from .sources import sources_supporting

    formats = cls.supported_formats(template=False)
    others = sources_supporting(fmt)
    return CalibrationConfigError(
        f"Source '{name}' ({cls.kind}) does not support format '{fmt}'; it supports "
        f"{', '.join(formats)}. Format '{fmt}' applies to: {', '.join(others) or 'no registered source'}."
    )
