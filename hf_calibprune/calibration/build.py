"""Turning a calibration spec into token samples: mixtures, formats, windows, padding and the fingerprint.

Sampling follows the reference code call for call, with a local ``random.Random(seed)``:

* ``stream`` (WikiText-2): ``i = randint(0, L - seq_len - 1)``, window ``[i, i + seq_len)`` of the
  joined, tokenized text (Wanda/SparseGPT ``get_wikitext2``).
* ``documents`` (C4 and other pre-training text): draw documents until one is longer than ``seq_len``,
  then a random window in it (``get_c4``), when at least ``num_samples`` documents are that long;
  otherwise concatenate documents (below).
* ``concat`` (``icl``/``cot``/``plain`` of task sources, short documents): draw examples, each tokenized
  with its special tokens (BOS), append until longer than ``seq_len``, then a random window (the study's
  ``input_format='concat'``).
* ``shots`` (``single``, ``zero``, ``shots=k``): ``k`` drawn examples, each with its BOS, concatenated and
  truncated to ``seq_len``; shorter samples are right-padded and masked out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass
from itertools import islice
from typing import Any, Sequence

import torch

from ..errors import CalibrationError
from ..version import __version__
from .config import CalibrationConfig, CalibrationConfigError, Component, is_source_spec
from .samples import CalibrationSamples
from .sources import make_source, source_class_for
from .sources.base import CustomSource, LoadRequest, SyntheticSource, TextPool

__all__ = ["build_calibration_samples", "render_samples", "split_counts"]

logger = logging.getLogger(__name__)

#: Rows read from an ``IterableDataset`` passed in memory.
ITERABLE_MAX_ROWS = 20000


@dataclass
class _Planned:
    component: Component
    source: Any
    request: LoadRequest
    format: str


def split_counts(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` by ``weights`` with the largest-remainder method (ties go to the earlier entry)."""
    quotas = [w * total for w in weights]
    counts = [int(q) for q in quotas]
    remainder = total - sum(counts)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1
    return counts


def _component_seed(seed: int, index: int, component: Component, single: bool) -> int:
    if single:
        return seed
    digest = hashlib.sha256(f"{seed}/{index}/{component.name}/{component.format}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _resolve_format(component: Component, cls: Any, template: bool) -> str:
    formats = cls.supported_formats(template=template)
    fmt = component.format if component.format in formats else "plain"
    if fmt == "plain" and cls.kind == "task" and not template:
        return "icl"  # solved examples concatenated: the study's default for task data
    return fmt


def _plan(
    calibration: Any, *, text_field: str | None, template: str | None
) -> tuple[CalibrationConfig | None, list[_Planned]]:
    memory: CustomSource | None = None
    config: CalibrationConfig | None = None
    if calibration is None:
        config = CalibrationConfig()  # the offline default: text the model generates itself
    elif isinstance(calibration, CalibrationConfig):
        config = calibration
    elif isinstance(calibration, dict):
        config = CalibrationConfig.from_dict(calibration)
    elif isinstance(calibration, (str, os.PathLike)):
        config = CalibrationConfig(sources=os.fspath(calibration), text_field=text_field, template=template)
    elif isinstance(calibration, (list, tuple)):
        if not calibration:
            raise CalibrationConfigError("The calibration list is empty; pass texts or source names.")
        if not all(isinstance(item, str) for item in calibration):
            kinds = sorted({type(item).__name__ for item in calibration})
            raise CalibrationConfigError(f"A calibration list holds strings (texts or source names), not {kinds}.")
        if all(is_source_spec(item) for item in calibration):
            config = CalibrationConfig(sources=list(calibration), text_field=text_field, template=template)
        else:
            texts = list(calibration)
            digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
            memory = CustomSource(
                "<texts>",
                rows=[{"text": text} for text in texts],
                origin={"origin": "memory", "texts": len(texts), "texts_sha256": digest},
            )
    else:
        memory = _dataset_source(calibration)
    if memory is not None:
        component = Component(name=memory.display_name, weight=1.0, format="plain", explicit_format=False, kind="memory")
        request = LoadRequest(text_field=text_field, template=template)
        return None, [_Planned(component, memory, request, "plain")]
    assert config is not None
    planned = []
    for component in config.components:
        cls = source_class_for(component)
        source = cls(component.name) if cls is CustomSource else make_source(component.name)
        if cls is CustomSource and component.kind == "hub":
            source = CustomSource(component.name, hub_id=component.name)
        request = LoadRequest(
            data_files=config.files_for(component),
            data_dir=config.data_dir,
            revision=config.revision_for(component),
            text_field=config.text_field,
            template=config.template,
        )
        fmt = _resolve_format(component, cls, config.template is not None)
        planned.append(_Planned(component, source, request, fmt))
    return config, planned


def _dataset_source(data: Any) -> CustomSource:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(data, datasets.Dataset):
        rows = [dict(row) for row in data]
        origin = {"origin": "memory", "dataset_fingerprint": getattr(data, "_fingerprint", None), "rows": len(rows)}
        return CustomSource("<dataset>", rows=rows, origin=origin)
    if datasets is not None and isinstance(data, datasets.IterableDataset):
        rows = [dict(row) for row in islice(data, ITERABLE_MAX_ROWS)]
        origin = {"origin": "memory", "iterable": True, "max_rows": ITERABLE_MAX_ROWS, "rows": len(rows)}
        return CustomSource("<iterable dataset>", rows=rows, origin=origin)
    raise CalibrationConfigError(
        f"Cannot calibrate on a {type(data).__name__}. Pass a source name ('c4', 'gsm8k:icl', 'self'), a local "
        "file path, a list of strings, a datasets.Dataset/IterableDataset, or a CalibrationConfig."
    )


# --------------------------------------------------------------------------------------------------
# Token sampling
# --------------------------------------------------------------------------------------------------
class _LazyTokens:
    """Token ids of a pool's texts, tokenized on first use (with special tokens) and cached.

    Large pools (GSM8K, C4) are only tokenized as far as sampling and the size checks need.
    """

    _CHUNK = 2048

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        self.tokenizer = tokenizer
        self.texts = texts
        self.cache: dict[int, list[int]] = {}
        self.scanned = 0  # texts [0, scanned) are in the cache

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> list[int]:
        ids = self.cache.get(index)
        if ids is None:
            ids = list(self.tokenizer(self.texts[index], add_special_tokens=True, verbose=False)["input_ids"])
            self.cache[index] = ids
        return ids

    def scan(self, *, tokens: int | None = None, longer_than: int | None = None, count: int = 0) -> tuple[int, int]:
        """Tokenize in order until ``tokens`` total or ``count`` texts longer than ``longer_than``; return both."""
        total = sum(len(self.cache[i]) for i in range(self.scanned))
        long_texts = 0 if longer_than is None else sum(1 for i in range(self.scanned) if len(self.cache[i]) > longer_than)
        while self.scanned < len(self.texts):
            if tokens is not None and total >= tokens:
                break
            if longer_than is not None and long_texts >= count:
                break
            # Chunks grow with what was scanned: small pools and early stops stay cheap.
            stop = min(self.scanned + min(max(32, self.scanned), self._CHUNK), len(self.texts))
            batch = [i for i in range(self.scanned, stop) if i not in self.cache]
            if batch:
                encoded = self.tokenizer([self.texts[i] for i in batch], add_special_tokens=True, verbose=False)
                for i, ids in zip(batch, encoded["input_ids"]):
                    self.cache[i] = list(ids)
            for i in range(self.scanned, stop):
                total += len(self.cache[i])
                if longer_than is not None and len(self.cache[i]) > longer_than:
                    long_texts += 1
            self.scanned = stop
        return total, long_texts


def _too_little(name: str, total: int, pieces: int, count: int, seq_len: int) -> CalibrationError:
    return CalibrationError(
        f"Calibration source '{name}' has {total} tokens ({pieces} texts), fewer than num_samples x seq_len = "
        f"{count} x {seq_len} = {count * seq_len}. Lower num_samples or seq_len, add data (data_files, data_dir) "
        "or mix in another source."
    )


def _sample_concat(tokens: _LazyTokens, count: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    samples = []
    for _ in range(count):
        concat: list[int] = []
        while len(concat) <= seq_len:
            concat.extend(tokens[rng.randint(0, len(tokens) - 1)])
        start = rng.randint(0, len(concat) - seq_len - 1)
        samples.append(concat[start : start + seq_len])
    return samples


def _sample_wanda(tokens: _LazyTokens, count: int, seq_len: int, rng: random.Random) -> list[list[int]]:
    samples = []
    for _ in range(count):
        while True:
            doc = tokens[rng.randint(0, len(tokens) - 1)]
            if len(doc) > seq_len:
                break
        start = rng.randint(0, len(doc) - seq_len - 1)
        samples.append(doc[start : start + seq_len])
    return samples


def _sample_shots(tokens: _LazyTokens, count: int, seq_len: int, shots: int, rng: random.Random) -> list[list[int]]:
    samples = []
    for _ in range(count):
        ids: list[int] = []
        for _ in range(shots):
            ids.extend(tokens[rng.randint(0, len(tokens) - 1)])
            if len(ids) > seq_len:
                break
        samples.append(ids[:seq_len])
    return samples


def _sample_pool(
    pool: TextPool, name: str, tokenizer: Any, count: int, seq_len: int, shots: int | None, rng: random.Random
) -> tuple[list[list[int]], str]:
    if tokenizer is None:
        raise CalibrationError(f"Calibration source '{name}' is text; build_calibration_samples needs a tokenizer.")
    tokens = _LazyTokens(tokenizer, pool.texts)
    if pool.mode == "examples" and shots is not None:
        total, _ = tokens.scan(tokens=1)
        if total == 0:
            raise CalibrationError(f"The tokenizer turned every text of '{name}' into no tokens.")
        samples = _sample_shots(tokens, count, seq_len, shots, rng)
        if any(not sample for sample in samples):
            raise CalibrationError(f"Some texts of '{name}' tokenize to nothing; remove empty rows.")
        return samples, "shots"
    if pool.mode == "stream":
        stream = tokens[0]
        if len(stream) <= seq_len or len(stream) < count * seq_len:
            raise _too_little(name, len(stream), 1, count, seq_len)
        samples = []
        for _ in range(count):
            start = rng.randint(0, len(stream) - seq_len - 1)
            samples.append(stream[start : start + seq_len])
        return samples, "windows"
    if pool.mode == "documents":
        _, long_docs = tokens.scan(longer_than=seq_len, count=count)
        if long_docs >= count:
            return _sample_wanda(tokens, count, seq_len, rng), "wanda"
        logger.info(
            "Only %d of %d '%s' documents are longer than seq_len=%d; concatenating documents.",
            long_docs,
            len(tokens),
            name,
            seq_len,
        )
    total, _ = tokens.scan(tokens=count * seq_len + 1)
    if total <= seq_len or total < count * seq_len:
        raise _too_little(name, total, len(tokens), count, seq_len)
    return _sample_concat(tokens, count, seq_len, rng), "concat"


def _shots_for(fmt: str, shots: int | None, kind: str) -> int | None:
    if fmt in ("single", "zero"):
        return 1
    if kind in ("synthetic", "model") or fmt == "plain" and kind in ("pretraining",):
        return None
    return shots


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def build_calibration_samples(
    calibration: Any,
    tokenizer: Any,
    *,
    num_samples: int,
    seq_len: int,
    seed: int,
    model: Any = None,
    text_field: str | None = None,
    template: str | None = None,
) -> CalibrationSamples:
    """Build ``num_samples`` calibration sequences of ``seq_len`` tokens, deterministically for ``seed``.

    Args:
        calibration (`str`, `list[str]`, `datasets.Dataset`, `datasets.IterableDataset`, `dict` or `CalibrationConfig`):
            A registered source name (``"c4"``, ``"gsm8k"``, ``"self"``; ``"gsm8k:icl"`` picks a format), a
            local ``.jsonl``/``.json``/``.txt``/``.tsv``/``.csv``/``.parquet`` file or dataset directory, a Hub
            dataset id, a list of source specs (equal-weight mixture), a list of raw texts, a dataset with a
            ``text`` column, or a :class:`CalibrationConfig` (whose ``num_samples``/``seq_len``/``seed`` win
            over the arguments when set).
        tokenizer (`PreTrainedTokenizerBase`): tokenizes text sources (adds its special tokens, e.g. BOS).
        num_samples (`int`): number of sequences.
        seq_len (`int`): tokens per sequence.
        seed (`int`): seed of the local random generators.
        model (`PreTrainedModel`, *optional*): needed by the ``self`` source, which samples from it.
        text_field (`str`, *optional*): text column of a file or dataset passed directly (default ``"text"``).
        template (`str`, *optional*): ``str.format`` template over the columns, instead of ``text_field``.

    Returns:
        `CalibrationSamples`: ``input_ids`` and ``attention_mask`` of shape ``[num_samples, seq_len]`` (0 on
        right padding) and the fingerprint.

    Raises:
        `CalibrationError`: unknown source or format, bad weights, missing or too little data, missing columns,
        or the Hub needed while offline (the message says how to pass a local copy).
    """
    config, planned = _plan(calibration, text_field=text_field, template=template)
    if config is not None:
        num_samples = config.num_samples or num_samples
        seq_len = config.seq_len or seq_len
        seed = config.seed if config.seed is not None else seed
    for label, value in (("num_samples", num_samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CalibrationConfigError(f"`{label}={value!r}` must be a positive integer.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CalibrationConfigError(f"`seed={seed!r}` must be an integer.")
    shots_setting = config.shots if config is not None else None

    counts = split_counts([p.component.weight for p in planned], num_samples)
    samples: list[list[int]] = []
    entries: list[dict[str, Any]] = []
    for index, (item, count) in enumerate(zip(planned, counts)):
        component = item.component
        entry: dict[str, Any] = {
            "name": component.name,
            "weight": component.weight,
            "num_samples": count,
            "format": item.format,
            "kind": item.source.kind,
        }
        if item.format != component.format:
            entry["requested_format"] = component.format
        if count == 0:
            logger.warning("Calibration source '%s' gets 0 of %d samples at weight %g.", component.name, num_samples, component.weight)
            entries.append(entry)
            continue
        component_seed = _component_seed(seed, index, component, len(planned) == 1)
        rng = random.Random(component_seed)
        if item.source.kind == "model":
            ids, origin = item.source.build_ids(tokenizer, model, count, seq_len, component_seed)
            mode = "generated"
        elif isinstance(item.source, SyntheticSource):
            if tokenizer is None:
                raise CalibrationError(f"Calibration source '{component.name}' needs a tokenizer.")
            ids, origin, mode = item.source.build_ids(tokenizer, count, seq_len, rng), {"origin": "synthetic"}, "first-window"
        else:
            pool = item.source.pool(item.request, item.format)
            shots = _shots_for(item.format, shots_setting, item.source.kind)
            ids, mode = _sample_pool(pool, component.name, tokenizer, count, seq_len, shots, rng)
            origin = pool.origin
            if shots is not None:
                entry["shots"] = shots
        entry.update(origin)
        entry["sampling"] = mode
        if len(planned) > 1:
            entry["seed"] = component_seed
        entries.append(entry)
        samples.extend(ids)

    pad_id = _pad_id(tokenizer)
    input_ids = torch.full((num_samples, seq_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((num_samples, seq_len), dtype=torch.long)
    for row, ids in enumerate(samples):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    fingerprint = {
        "sources": entries,
        "format": config.format if config is not None else "plain",
        "shots": shots_setting,
        "num_samples": num_samples,
        "seq_len": seq_len,
        "seed": seed,
        "pad_token_id": pad_id,
        "padding_tokens": int((attention_mask == 0).sum()),
        "token_sha256": hashlib.sha256(input_ids.numpy().astype("<i8").tobytes()).hexdigest(),
        "hf_calibprune_version": __version__,
    }
    result = CalibrationSamples(input_ids=input_ids, attention_mask=attention_mask, fingerprint=fingerprint)
    logger.info("Calibration: %s", result.describe())
    return result


def _pad_id(tokenizer: Any) -> int:
    for attribute in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attribute, None) if tokenizer is not None else None
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def render_samples(
    source: str,
    format: str | None = None,
    n: int = 2,
    data_files: str | list[str] | None = None,
    data_dir: str | None = None,
    shots: int | None = None,
    seed: int = 0,
    text_field: str | None = None,
    template: str | None = None,
) -> list[str]:
    """The texts the model would see for ``source`` in ``format``, before tokenization.

    Each entry is one unit of a sample: a solved example (``icl``/``cot``, whose samples concatenate them),
    a prompt (``zero``), ``shots`` examples joined by blank lines, a document, or an excerpt of a stream.

    Args:
        source (`str`): registered name (``"gsm8k"`` or ``"gsm8k:cot"``), local path or Hub id.
        format (`str`, *optional*): one of ``FORMATS``; defaults to the spec's or ``"plain"``.
        n (`int`, *optional*, defaults to 2): how many texts.
        data_files, data_dir, shots, seed, text_field, template: as in :class:`CalibrationConfig`.
    """
    config = CalibrationConfig(
        sources=source if format is None else f"{source.rsplit(':', 1)[0] if _has_format(source) else source}:{format}",
        shots=shots,
        data_files=data_files,
        data_dir=data_dir,
        text_field=text_field,
        template=template,
    )
    _, planned = _plan(config, text_field=text_field, template=template)
    item = planned[0]
    rng = random.Random(seed)
    if item.source.kind == "model":
        raise CalibrationError("Source 'self' is generated by the model at pruning time; there is no text to show.")
    if isinstance(item.source, SyntheticSource):
        return item.source.texts(n, rng)
    pool = item.source.pool(item.request, item.format)
    if pool.mode == "stream":
        text = pool.texts[0]
        width = min(2000, len(text))
        return [text[start : start + width] for start in (rng.randint(0, len(text) - width) for _ in range(n))]
    per_sample = _shots_for(item.format, shots, item.source.kind) if pool.mode == "examples" else None
    if per_sample:
        return ["\n\n".join(pool.texts[rng.randint(0, len(pool.texts) - 1)] for _ in range(per_sample)) for _ in range(n)]
    return [pool.texts[rng.randint(0, len(pool.texts) - 1)] for _ in range(n)]


def _has_format(spec: str) -> bool:
    from .config import FORMATS

    return spec.rpartition(":")[2] in FORMATS and ":" in spec
