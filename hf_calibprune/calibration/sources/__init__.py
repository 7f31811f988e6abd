"""The registry of calibration sources: one file per source, one line per name."""

from __future__ import annotations

from typing import Any

from ..config import CalibrationConfigError
from ...registry import Registry

__all__ = ["SOURCES", "make_source", "source_class_for", "sources_with_language", "sources_with_rationales", "sources_supporting"]

_PACKAGE = "hf_calibprune.calibration.sources"

#: Every named calibration source (name -> class), imported on first use.
SOURCES: Registry[Any] = Registry(
    "calibration source",
    {
        "c4": f"{_PACKAGE}.c4:C4Source",
        "pile": f"{_PACKAGE}.pile:PileSource",
        "oscar": f"{_PACKAGE}.oscar:OscarSource",
        "redpajama": f"{_PACKAGE}.redpajama:RedPajamaSource",
        "wikitext2": f"{_PACKAGE}.wikitext2:WikiText2Source",
        "gsm8k": f"{_PACKAGE}.gsm8k:GSM8KSource",
        "svamp": f"{_PACKAGE}.svamp:SVAMPSource",
        "mawps": f"{_PACKAGE}.mawps:MAWPSSource",
        "esnli": f"{_PACKAGE}.esnli:ESNLISource",
        "anli_r1": f"{_PACKAGE}.anli:ANLIR1Source",
        "anli_r2": f"{_PACKAGE}.anli:ANLIR2Source",
        "anli_r3": f"{_PACKAGE}.anli:ANLIR3Source",
        "commonsense_qa": f"{_PACKAGE}.commonsense_qa:CommonsenseQASource",
        "race": f"{_PACKAGE}.race:RACESource",
        "winogrande": f"{_PACKAGE}.winogrande:WinoGrandeSource",
        "rte": f"{_PACKAGE}.rte:RTESource",
        "boolq": f"{_PACKAGE}.boolq:BoolQSource",
        "random": f"{_PACKAGE}.random_text:RandomSource",
        "ellipses": f"{_PACKAGE}.ellipses:EllipsesSource",
        "self": f"{_PACKAGE}.self_generated:SelfSource",
        "wikipedia": f"{_PACKAGE}.wikipedia:WikipediaSource",
        "ud": f"{_PACKAGE}.ud:UDSource",
    },
    error=CalibrationConfigError,
)


def source_class_for(component: Any) -> type:
    """The class behind a validated mixture entry (a registered source, else :class:`CustomSource`)."""
    if component.kind == "registered":
        from ._language import split_language

        return SOURCES.get(split_language(component.name)[0])
    from .base import CustomSource

    return CustomSource


def make_source(name: str) -> Any:
    """An instance of registered source ``name``; ``"c4@de"`` gives :class:`C4Source` in German."""
    from ._language import split_language

    base, language = split_language(name)
    cls = SOURCES.get(base)
    if language is None:
        return cls()
    if not getattr(cls, "takes_language", False):
        raise CalibrationConfigError(
            f"Source '{base}' has no language choice ('{name}'); sources with languages: "
            f"{', '.join(sources_with_language())}."
        )
    return cls(language=language)


def sources_with_language() -> list[str]:
    """Registered names that take ``@lang``."""
    return [name for name in SOURCES if getattr(SOURCES.get(name), "takes_language", False)]


def sources_with_rationales() -> list[str]:
    """Registered names that support format ``cot``."""
    return [name for name in SOURCES if SOURCES.get(name).has_rationales()]


def sources_supporting(fmt: str) -> list[str]:
    """Registered names that support format ``fmt``."""
    return [name for name in SOURCES if fmt in SOURCES.get(name).supported_formats()]
