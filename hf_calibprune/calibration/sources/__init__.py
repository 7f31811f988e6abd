"""The registry of calibration sources: one file per source, one line per name."""

from __future__ import annotations

from typing import Any

from ..config import CalibrationConfigError
from ...registry import Registry

__all__ = ["SOURCES", "source_class_for", "sources_with_rationales", "sources_supporting"]

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
    },
    error=CalibrationConfigError,
)


def source_class_for(component: Any) -> type:
    """The class behind a validated mixture entry (a registered source, else :class:`CustomSource`)."""
    if component.kind == "registered":
        return SOURCES.get(component.name)
    from .base import CustomSource

    return CustomSource


def sources_with_rationales() -> list[str]:
    """Registered names that support format ``cot``."""
    return [name for name in SOURCES if SOURCES.get(name).has_rationales()]


def sources_supporting(fmt: str) -> list[str]:
    """Registered names that support format ``fmt``."""
    return [name for name in SOURCES if fmt in SOURCES.get(name).supported_formats()]
