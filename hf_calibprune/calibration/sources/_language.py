"""Pre-training text in many languages: ``name@lang`` picks a language through the source's Hub configuration.

``c4@de`` streams ``allenai/c4`` configuration ``de`` (mC4), ``oscar@fr`` OSCAR's
``unshuffled_deduplicated_fr`` subset, ``wikipedia@ja`` the ``20231101.ja`` dump of ``wikimedia/wikipedia``.
Offline, a local copy serves: ``<data_dir>/<source>/<lang>/*.jsonl`` (``<data_dir>/<source>/`` for the
default language), or any file passed as ``data_files``. Without one, the error names the local text of
that language the data mirror holds (``multilingual/<lang>/calib.jsonl``, read by source ``ud@<lang>``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from ...errors import CalibrationError
from ..io import HubSpec, load_hub_records, resolve_data_dir
from .base import DocumentSource, LoadRequest

__all__ = ["LanguageSource", "split_language", "LANGUAGE_CODE"]

#: What a language code looks like: ``de``, ``zh``, ``bg-Latn``, ``fil``.
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")


def split_language(name: str) -> tuple[str, str | None]:
    """``"c4@de"`` -> ``("c4", "de")``; a name without ``@`` -> ``(name, None)``."""
    base, sep, language = name.partition("@")
    return (base, language) if sep else (name, None)


class LanguageSource(DocumentSource):
    """A pre-training source offered in many languages; subclasses implement :meth:`hub_for`.

    Args:
        language (`str`, *optional*): language code (``"de"``); defaults to :attr:`default_language`.
    """

    default_language: ClassVar[str] = "en"
    takes_language: ClassVar[bool] = True

    def __init__(self, language: str | None = None) -> None:
        self.language = language or self.default_language
        if not LANGUAGE_CODE.match(self.language):
            raise CalibrationError(
                f"'{self.language}' is not a language code; write '{self.name}@de' (ISO 639 codes such as en, de, zh)."
            )
        self.hub = self.hub_for(self.language)

    @classmethod
    def hub_for(cls, language: str) -> HubSpec | None:
        """The Hub dataset and configuration holding ``language``."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        return self.name if self.language == self.default_language else f"{self.name}@{self.language}"

    def dirs(self) -> tuple[str, ...]:  # type: ignore[override]
        base = type(self).local_dirs or (self.name,)
        if self.language == self.default_language:
            return tuple(f"{folder}/{self.language}" for folder in base) + base
        return tuple(f"{folder}/{self.language}" for folder in base)

    def local_text_hint(self, root: Path | None) -> str:
        """Where the data mirror keeps local text in this language, for error messages."""
        where = root / "multilingual" / self.language / "calib.jsonl" if root is not None else None
        if where is not None and where.is_file():
            return (
                f"The data mirror holds {self.language} text in {where}: pass data_files='{where}' (--data-files), "
                f"or calibrate on source 'ud@{self.language}', which reads it."
            )
        return (
            f"Put {self.language} documents (JSON Lines with a 'text' field) in DATA_DIR/{self.dirs()[0]}/ and pass "
            f"data_dir=DATA_DIR, or pass data_files=PATH; source 'ud@{self.language}' reads "
            f"DATA_DIR/multilingual/{self.language}/calib.jsonl."
        )

    def load_hub(self, request: LoadRequest, fmt: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        assert self.hub is not None
        root = resolve_data_dir(request.data_dir)
        hint = (
            f"Pass a local copy instead: {self.local_text_hint(root)} A local mirror is read from "
            f"DATA_DIR/{self.dirs()[0]}/ ({', '.join(self.patterns(fmt)[:2])})."
        )
        rows, origin = load_hub_records(self.hub, source=self.label, revision=request.revision, hint=hint)
        return rows, {**origin, "language": self.language}
