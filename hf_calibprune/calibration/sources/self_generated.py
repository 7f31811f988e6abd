"""``self``: calibration text the model generates itself ("Beware of Calibration Data for Pruning LLMs").

Ji et al. (arXiv 2410.17711) sample continuations from the model with temperature 0.8, top-p 0.95,
top-k 50 and repetition penalty 1.1, then drop the 20% of samples with the highest perplexity
(``sample_ppl.py``: keep those below the 80th percentile). They start from 64-token prefixes of
Wikipedia; with no data at hand we start from the BOS token, which makes this source work offline.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...errors import CalibrationError
from .base import CalibrationSource

__all__ = ["SelfSource", "SelfGenerationOptions", "generate_self_samples"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfGenerationOptions:
    """Sampling settings of the ``self`` source.

    Args:
        temperature (`float`, *optional*, defaults to 0.8): softmax temperature.
        top_p (`float`, *optional*, defaults to 0.95): nucleus mass kept.
        top_k (`int`, *optional*, defaults to 50): most likely tokens kept.
        repetition_penalty (`float`, *optional*, defaults to 1.1): CTRL-style penalty on seen tokens.
        drop_fraction (`float`, *optional*, defaults to 0.2): share of generated samples with the highest
            perplexity that is dropped (``ceil(n / (1 - drop_fraction))`` are generated).
        batch_size (`int`, *optional*, defaults to 16): sequences generated at once.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 50
    repetition_penalty: float = 1.1
    drop_fraction: float = 0.2
    batch_size: int = 16


class SelfSource(CalibrationSource):
    """Text sampled from the model being pruned, starting at its BOS token (no dataset needed)."""

    name = "self"
    kind = "model"
    description = "text the model generates itself (Beware of Calibration Data; works offline)"
    reference = "ShiningSord/calibration_data generate_data.py, sample_ppl.py"

    def __init__(self, options: SelfGenerationOptions | None = None) -> None:
        self.options = options or SelfGenerationOptions()

    def build_ids(
        self, tokenizer: Any, model: Any, num_samples: int, seq_len: int, seed: int
    ) -> tuple[list[list[int]], dict[str, Any]]:
        if model is None:
            raise CalibrationError(
                "Calibration source 'self' generates text with the model being pruned; pass model=... to "
                "build_calibration_samples (CalibratedPruner does this for you)."
            )
        return generate_self_samples(model, tokenizer, num_samples, seq_len, seed, self.options)


def _first(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return None if value is None else int(value)


def _ids(*values: Any) -> list[int]:
    out: list[int] = []
    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        out.extend(int(v) for v in items if v is not None and int(v) not in out)
    return out


def _start_token(model: Any, tokenizer: Any) -> int:
    generation_config = getattr(model, "generation_config", None)
    for value in (
        getattr(tokenizer, "bos_token_id", None),
        getattr(model.config, "bos_token_id", None),
        getattr(generation_config, "bos_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.config, "eos_token_id", None),
    ):
        token = _first(value)
        if token is not None:
            return token
    raise CalibrationError(
        "Calibration source 'self' starts generation at the BOS token, but neither the tokenizer nor the "
        "model config defines bos_token_id (or eos_token_id). Set model.config.bos_token_id."
    )


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renames the forward argument ``past_key_values`` to ``cache``.
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(output: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise CalibrationError("The model returned no KV cache with use_cache=True; 'self' needs a causal LM with a cache.")


def _warp(scores: torch.Tensor, seen: torch.Tensor, banned: list[int], options: SelfGenerationOptions) -> torch.Tensor:
    """Repetition penalty, banned tokens, temperature, top-k and top-p, in transformers' order."""
    if options.repetition_penalty != 1.0:
        picked = scores.gather(1, seen)
        picked = torch.where(picked < 0, picked * options.repetition_penalty, picked / options.repetition_penalty)
        scores = scores.scatter(1, seen, picked)
    if banned:
        scores[:, banned] = float("-inf")
    scores = scores / options.temperature
    if 0 < options.top_k < scores.shape[-1]:
        kth = torch.topk(scores, options.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - options.top_p)
        remove[:, -1] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


def generate_self_samples(
    model: Any,
    tokenizer: Any,
    num_samples: int,
    seq_len: int,
    seed: int,
    options: SelfGenerationOptions | None = None,
) -> tuple[list[list[int]], dict[str, Any]]:
    """Sample ``num_samples`` sequences of ``seq_len`` tokens (BOS first) from ``model``.

    Batched, with the KV cache, under ``torch.no_grad``; EOS is never sampled, so every sequence has
    ``seq_len`` tokens. Sampling uses a local ``torch.Generator`` seeded with ``seed``. The model's
    ``training`` flag and ``config.use_cache`` are restored afterwards, even on error.

    Returns:
        ``(samples, origin)``: token id lists, and the fingerprint entry (model, settings, counts).
    """
    from tqdm.auto import tqdm

    options = options or SelfGenerationOptions()
    if not 0 <= options.drop_fraction < 1:
        raise CalibrationError(f"drop_fraction={options.drop_fraction} must be in [0, 1).")
    start = _start_token(model, tokenizer)
    generation_config = getattr(model, "generation_config", None)
    banned = _ids(
        getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None,
        getattr(model.config, "eos_token_id", None),
        getattr(generation_config, "eos_token_id", None),
    )
    total = num_samples if options.drop_fraction == 0 else math.ceil(num_samples / (1 - options.drop_fraction))
    device = model.get_input_embeddings().weight.device
    vocab = model.get_input_embeddings().weight.shape[0]
    if start >= vocab:
        raise CalibrationError(f"BOS id {start} is outside the model's vocabulary of {vocab} tokens.")
    banned = [token for token in banned if token < vocab]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    cache_kwarg = _cache_kwarg(model)

    was_training = model.training
    config_use_cache = getattr(model.config, "use_cache", None)
    sequences: list[list[int]] = []
    log_likelihoods: list[float] = []
    progress = tqdm(total=total * max(seq_len - 1, 0), desc="self-generating calibration text", unit="tok", leave=False)
    try:
        model.eval()
        if config_use_cache is not None:
            model.config.use_cache = True
        with torch.no_grad():
            for begin in range(0, total, options.batch_size):
                size = min(options.batch_size, total - begin)
                tokens = torch.full((size, 1), start, dtype=torch.long, device=device)
                loglik = torch.zeros(size, dtype=torch.float64)
                past = None
                current = tokens
                for step in range(seq_len - 1):
                    extra = {} if past is None else {cache_kwarg: past}
                    output = model(input_ids=current, use_cache=True, **extra)
                    past = _output_cache(output)
                    logits = output.logits[:, -1, :].float()
                    scores = _warp(logits.clone(), tokens, banned, options)
                    choice = torch.multinomial(scores.softmax(dim=-1).cpu(), 1, generator=generator)
                    loglik += torch.log_softmax(logits, dim=-1).cpu().gather(1, choice).squeeze(1).double()
                    current = choice.to(device)
                    tokens = torch.cat([tokens, current], dim=1)
                    progress.update(size)
                sequences.extend(tokens.cpu().tolist())
                log_likelihoods.extend(loglik.tolist())
                del past
    finally:
        progress.close()
        model.train(was_training)
        if config_use_cache is not None:
            model.config.use_cache = config_use_cache

    if total > num_samples:
        # Drop the highest-perplexity samples (lowest mean log-likelihood), keeping generation order.
        ranked = sorted(range(total), key=lambda i: (-log_likelihoods[i], i))[:num_samples]
        keep = sorted(ranked)
        sequences = [sequences[i] for i in keep]
    origin = {
        "origin": "model",
        "model": getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None),
        "model_type": getattr(model.config, "model_type", None),
        "start_token_id": start,
        "generation": asdict(options),
        "generated": total,
        "kept": num_samples,
    }
    logger.info("Generated %d self-calibration samples of %d tokens (kept %d).", total, seq_len, num_samples)
    return sequences, origin
