"""Perplexity as the Wanda and SparseGPT papers measure it.

The evaluation text (WikiText-2 test rows joined with ``"\\n\\n"``) is tokenized once, cut into
non-overlapping windows of ``seq_len`` tokens (the tail shorter than a window is dropped), and the
perplexity is ``exp`` of the mean over windows of each window's mean next-token negative
log-likelihood. This is the computation of ``eval_ppl_wikitext`` in
https://github.com/locuslab/wanda/blob/main/lib/eval.py, batched.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import EvaluationError, find_data_file, read_records

__all__ = ["PERPLEXITY_SOURCES", "load_evaluation_text", "perplexity", "perplexity_details"]

logger = logging.getLogger(__name__)

# Evaluation texts by name: how each is found in a local mirror and joined.
PERPLEXITY_SOURCES = ("wikitext2", "c4")

# Offline there is no C4 validation shard; the last quarter of the train sample's documents stands in
# for it (documents 600-799 of the shared 800). Calibration should draw C4 samples from the others.
C4_TRAIN_EVAL_FRACTION = 0.25
# The seed study's C4 perplexity text: the first 1,100 validation documents joined with " ".
C4_VALIDATION_DOCS = 1100


def _wikitext2_text(data_dir: str | os.PathLike | None) -> tuple[str, str]:
    path = find_data_file(
        data_dir, "wikitext2", ["test.jsonl", "test.shared.jsonl", "test*.jsonl", "wiki.test.raw"], what="WikiText-2 perplexity"
    )
    if path.suffix == ".raw":
        return path.read_text(encoding="utf-8"), str(path)
    rows = read_records(path)
    return "\n\n".join(row["text"] for row in rows), f"{path} (all {len(rows)} rows)"


def _c4_text(data_dir: str | os.PathLike | None) -> tuple[str, str]:
    try:
        path = find_data_file(data_dir, "c4", ["c4-validation*.json*"], what="C4 perplexity")
        rows = read_records(path)[:C4_VALIDATION_DOCS]
        return " ".join(row["text"] for row in rows), f"{path} (first {len(rows)} documents)"
    except EvaluationError:
        path = find_data_file(data_dir, "c4", ["c4-train*.jsonl", "*.jsonl"], what="C4 perplexity")
    documents = read_records(path)
    if len(documents) < 4:
        raise EvaluationError(f"'{path}' has {len(documents)} documents; C4 perplexity needs at least 4.")
    start = len(documents) - int(len(documents) * C4_TRAIN_EVAL_FRACTION)
    rows = documents[start:]
    logger.warning(
        "No C4 validation shard in the data directory: C4 perplexity uses documents %d-%d of %s instead.",
        start,
        start + len(rows) - 1,
        path.name,
    )
    return " ".join(row["text"] for row in rows), f"{path} (documents {start}-{start + len(rows) - 1}, no validation shard)"


_NAMED_TEXTS = {"wikitext2": _wikitext2_text, "c4": _c4_text}


def load_evaluation_text(text_or_source: Any, data_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """Resolve what :func:`perplexity` accepts into ``(text, description)``.

    Args:
        text_or_source:
            A name of :data:`PERPLEXITY_SOURCES`, a path to a ``.txt``/``.raw`` file (read as is) or a
            ``.jsonl``/``.json`` file (``text`` fields joined with ``"\\n\\n"``), a list of strings (joined
            with ``"\\n\\n"``), or a `datasets.Dataset` with a ``text`` column.
        data_dir (`str`, *optional*): local mirror for named sources.
    """
    if isinstance(text_or_source, (list, tuple)):
        if not all(isinstance(item, str) for item in text_or_source):
            raise EvaluationError("A list given as perplexity text must hold only strings.")
        return "\n\n".join(text_or_source), f"{len(text_or_source)} strings"
    if hasattr(text_or_source, "column_names"):
        if "text" not in text_or_source.column_names:
            raise EvaluationError(
                f"The dataset given as perplexity text has no 'text' column (it has {text_or_source.column_names})."
            )
        return "\n\n".join(text_or_source["text"]), f"dataset of {len(text_or_source)} rows"
    if isinstance(text_or_source, (str, os.PathLike)):
        name = str(text_or_source)
        if name.lower() in _NAMED_TEXTS:
            return _NAMED_TEXTS[name.lower()](data_dir)
        path = Path(name).expanduser()
        if path.is_file():
            if path.suffix in {".jsonl", ".json"}:
                rows = read_records(path)
                if rows and "text" not in rows[0]:
                    raise EvaluationError(f"'{path}' rows have no 'text' field (they have {sorted(rows[0])}).")
                return "\n\n".join(row["text"] for row in rows), str(path)
            return path.read_text(encoding="utf-8"), str(path)
        raise EvaluationError(
            f"'{name}' is neither a file nor a known evaluation text ({', '.join(PERPLEXITY_SOURCES)}). "
            "Pass a path to a .txt/.jsonl file, a list of strings, or one of those names."
        )
    raise EvaluationError(f"Cannot read perplexity text from a {type(text_or_source).__name__}.")


def _default_seq_len(model: torch.nn.Module) -> int:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048
    return int(min(2048, limit))


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model without parameters
        return torch.device("cpu")


@torch.no_grad()
def _window_nlls(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, desc: str) -> list[float]:
    device = _model_device(model)
    nlls: list[float] = []
    for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch", leave=False):
        batch = windows[start : start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        shift_logits = logits[:, :-1, :].float()
        shift_labels = batch[:, 1:]
        losses = F.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
        ).view(batch.shape[0], -1)
        nlls.extend(losses.mean(dim=1).tolist())
    return nlls


def perplexity_details(
    model: torch.nn.Module,
    tokenizer: Any,
    text_or_source: Any,
    seq_len: int | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Like :func:`perplexity` but returns ``{"perplexity", "nll", "windows", "seq_len", "tokens", "text", "window_nlls"}``.

    ``window_nlls`` holds each window's mean negative log-likelihood, in window order (the units a paired
    bootstrap resamples).
    """
    seq_len = int(seq_len or _default_seq_len(model))
    if seq_len < 2:
        raise EvaluationError(f"seq_len={seq_len} is too short; perplexity needs windows of at least 2 tokens.")
    if batch_size < 1:
        raise EvaluationError(f"batch_size={batch_size} must be a positive integer.")
    if limit is not None and limit < 1:
        raise EvaluationError(f"limit={limit} must be a positive number of windows (or None for all).")
    text, description = load_evaluation_text(text_or_source, data_dir)
    input_ids = tokenizer(text, return_tensors="pt").input_ids.reshape(-1)
    num_windows = input_ids.numel() // seq_len
    if num_windows == 0:
        raise EvaluationError(
            f"The evaluation text ({description}) has {input_ids.numel()} tokens, fewer than one window of "
            f"seq_len={seq_len}. Use a smaller seq_len or more text."
        )
    if limit is not None:
        num_windows = min(num_windows, limit)
    windows = input_ids[: num_windows * seq_len].view(num_windows, seq_len)
    was_training = model.training
    model.eval()
    try:
        nlls = _window_nlls(model, windows, batch_size, desc=f"perplexity ({num_windows}x{seq_len})")
    finally:
        model.train(was_training)
    mean_nll = sum(nlls) / len(nlls)
    value = math.exp(mean_nll)
    if not math.isfinite(value):
        logger.warning("Perplexity overflowed (mean NLL %.3f); the model's predictions are degenerate.", mean_nll)
    return {
        "perplexity": value,
        "nll": mean_nll,
        "windows": num_windows,
        "seq_len": seq_len,
        "tokens": num_windows * seq_len,
        "text": description,
        "window_nlls": nlls,
    }


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    text_or_source: str | os.PathLike | Sequence[str] | Any,
    seq_len: int | None = None,
    batch_size: int = 1,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> float:
    """Perplexity of ``model`` on a text, the standard way of the Wanda and SparseGPT papers.

    The text is tokenized once, cut into non-overlapping windows of ``seq_len`` tokens, and the result is
    ``exp(mean over windows of the window's mean next-token NLL)``. The model is put in eval mode under
    `torch.no_grad` and its training mode restored afterwards.

    Args:
        model (`torch.nn.Module`): a causal LM returning ``.logits``.
        tokenizer: its tokenizer.
        text_or_source: ``"wikitext2"`` (``<data_dir>/wikitext2/test*.jsonl`` rows joined with ``"\\n\\n"``),
            ``"c4"`` (a C4 validation shard if present, else the last quarter of the documents of the C4 train
            sample: documents 600-799 of the shared 800), a
            ``.txt``/``.jsonl`` path, a list of strings, or a `datasets.Dataset` with a ``text`` column.
        seq_len (`int`, *optional*, defaults to ``min(2048, max_position_embeddings)``): window length.
        batch_size (`int`, *optional*, defaults to 1): windows per forward pass.
        limit (`int`, *optional*): evaluate only the first ``limit`` windows.
        data_dir (`str`, *optional*): local data mirror for named sources.

    Returns:
        `float`: the perplexity.
    """
    return perplexity_details(model, tokenizer, text_or_source, seq_len, batch_size, limit, data_dir)["perplexity"]
