"""``recover``: a short sparsity-preserving fine-tune of a pruned causal LM with :class:`transformers.Trainer`."""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..version import __version__
from .adapters import lora_config_for_masks, merge_adapter_preserving_sparsity, shira_config_for_masks
from .callback import SparsityPreservingCallback
from .masks import check_masks, extract_masks, full_masks, is_structurally_pruned, measured_sparsity

__all__ = ["RecoveryRecord", "recover", "load_texts", "build_lm_blocks"]

logger = logging.getLogger(__name__)

_ADAPTERS = ("none", "lora", "shira")


@dataclass(frozen=True)
class RecoveryRecord:
    """What a :func:`recover` run did, measured.

    Args:
        steps (`int`): optimizer steps taken.
        adapter (`str`): ``"none"`` (masked full fine-tune), ``"lora"`` or ``"shira"``.
        lora (`bool`): whether a LoRA adapter was trained and merged.
        learning_rate (`float`): peak learning rate.
        seq_len (`int`): tokens per training block.
        batch_size (`int`): blocks per micro-batch.
        gradient_accumulation_steps (`int`): micro-batches per optimizer step.
        train_blocks (`int`): blocks in the training data.
        loss_blocks (`int`): leading training blocks the before/after losses average over.
        loss_before (`float`): mean LM loss on those blocks before training.
        loss_after (`float`): the same after training, merging and re-masking.
        train_loss (`float`): mean training loss reported by the Trainer.
        masked_weights (`int`): pruned weights kept pruned.
        sparsity (`float`): measured fraction of zeros over those weights after training.
        seconds (`float`): wall time of the whole run.
        version (`str`): hf_calibprune version.
    """

    steps: int
    adapter: str
    lora: bool
    learning_rate: float
    seq_len: int
    batch_size: int
    gradient_accumulation_steps: int
    train_blocks: int
    loss_blocks: int
    loss_before: float
    loss_after: float
    train_loss: float
    masked_weights: int
    sparsity: float
    seconds: float
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def load_texts(source: str | Path | Iterable[str] | Any, text_field: str = "text") -> list[str]:
    """Read training texts.

    Args:
        source: a ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file (one object per line with
            a ``text_field`` string), a ``datasets.Dataset`` with that column, or an iterable of strings.
        text_field (`str`, *optional*, defaults to `"text"`): field holding the text in ``.jsonl`` rows / datasets.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"Training data file '{path}' does not exist; pass a .txt or .jsonl file.")
        if path.suffix == ".jsonl":
            texts = []
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                        raise ConfigError(
                            f"{path}:{number} has no string field '{text_field}' (it has {keys}); write one "
                            f'{{"{text_field}": ...}} object per line.'
                        )
                    texts.append(row[text_field])
        elif path.suffix in (".txt", ".text", ".md", ""):
            raw = path.read_text(encoding="utf-8")
            texts = [part.strip() for part in raw.replace("\r\n", "\n").split("\n\n")]
        else:
            raise ConfigError(f"Cannot read training data '{path}': use a .txt or .jsonl (with a '{text_field}' field).")
    elif hasattr(source, "column_names"):
        if text_field not in source.column_names:
            raise ConfigError(f"The dataset has no '{text_field}' column (it has {source.column_names}).")
        texts = list(source[text_field])
    else:
        texts = list(source)
        if not all(isinstance(text, str) for text in texts):
            raise ConfigError("Training texts must be strings.")
    return [text for text in texts if text and text.strip()]


def build_lm_blocks(texts: list[str], tokenizer: Any, seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """Tokenize, join with EOS and cut into ``[n, seq_len]`` blocks (the remainder is dropped)."""
    if seq_len < 2:
        raise ConfigError(f"`seq_len={seq_len}` is too short; pass at least 2 (typically 128-2048).")
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    budget = None if max_blocks is None else max_blocks * seq_len
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if budget is not None and len(ids) >= budget:
            break
    count = len(ids) // seq_len
    if max_blocks is not None:
        count = min(count, max_blocks)
    if count == 0:
        raise ConfigError(
            f"The training data holds {len(ids)} tokens, fewer than one block of seq_len={seq_len}; pass more "
            "text or a smaller seq_len."
        )
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def _logging_callback():
    """A Trainer callback that reports progress with tqdm (stderr) and logs through :mod:`logging`.

    It replaces the Trainer's own printer/progress callbacks, which write the log dicts to stdout.
    """
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class _LogCallback(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=state.max_steps, desc="recovery", unit="step", leave=False)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                logger.info("step %d: %s", state.global_step, {k: round(v, 4) if isinstance(v, float) else v for k, v in logs.items()})

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return _LogCallback()


@torch.no_grad()
def _mean_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(device)
        loss = model(input_ids=batch, labels=batch).loss
        total += float(loss) * len(batch)
        count += len(batch)
    return total / count


def recover(
    model: nn.Module,
    tokenizer: Any,
    data: str | Path | Iterable[str] | Any,
    steps: int,
    *,
    lora: bool = False,
    shira: bool = False,
    learning_rate: float | None = None,
    seq_len: int = 256,
    batch_size: int = 4,
    gradient_accumulation_steps: int = 1,
    output_dir: str | Path | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    adapter_rank: int | None = None,
    adapter_dir: str | Path | None = None,
    bf16: bool = False,
    seed: int = 0,
    loss_blocks: int = 8,
    training_args: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Fine-tune a pruned causal LM briefly, keeping every pruned weight exactly zero.

    Without an adapter it trains all parameters with :class:`SparsityPreservingCallback`; with ``lora=True`` it
    trains a LoRA adapter on the pruned modules and merges it with
    :func:`~hf_calibprune.recovery.merge_lora_preserving_sparsity`; with ``shira=True`` it trains a SHiRA adapter
    on kept positions only. The measured :class:`RecoveryRecord` is attached as ``model.recovery_record``.

    Args:
        model (`torch.nn.Module`): the pruned causal LM (changed in place and returned).
        tokenizer: its tokenizer.
        data: training texts, see :func:`load_texts`.
        steps (`int`): optimizer steps.
        lora (`bool`, *optional*, defaults to `False`): train and merge a LoRA adapter.
        shira (`bool`, *optional*, defaults to `False`): train and merge a mask-aware SHiRA adapter.
        learning_rate (`float`, *optional*): defaults to 2e-4 with an adapter, 2e-5 without.
        seq_len (`int`, *optional*, defaults to 256): tokens per training block.
        batch_size (`int`, *optional*, defaults to 4): blocks per micro-batch.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1): micro-batches per optimizer step.
        output_dir (`str`, *optional*): Trainer output directory; a temporary one (deleted afterwards) if omitted.
        masks (`dict[str, torch.BoolTensor]`, *optional*): masks to keep; read from the model if omitted.
        adapter_rank (`int`, *optional*): LoRA rank (default 16) or SHiRA ``r`` (default 8).
        adapter_dir (`str`, *optional*): also save the trained adapter alone there (``save_pretrained``).
        bf16 (`bool`, *optional*, defaults to `False`): bf16 mixed precision (autocast; works on CPU).
        seed (`int`, *optional*, defaults to 0): seed of the adapter's initialisation and of the Trainer.
        loss_blocks (`int`, *optional*, defaults to 8): leading blocks to measure the loss on before and after.
        training_args (`dict`, *optional*): extra :class:`transformers.TrainingArguments` fields.

    Returns:
        `torch.nn.Module`: the fine-tuned (merged) model with its zeros intact.
    """
    from transformers import PrinterCallback, ProgressCallback, Trainer, TrainingArguments, default_data_collator

    import datasets

    if lora and shira:
        raise ConfigError("Pass either `lora=True` or `shira=True`, not both.")
    if steps < 1:
        raise ConfigError(f"`steps={steps}` must be at least 1.")
    adapter = "lora" if lora else "shira" if shira else "none"
    if learning_rate is None:
        learning_rate = 2e-5 if adapter == "none" else 2e-4
    started = time.perf_counter()

    needed = steps * batch_size * gradient_accumulation_steps
    blocks = build_lm_blocks(load_texts(data), tokenizer, seq_len, max_blocks=max(needed, loss_blocks))
    if len(blocks) < needed:
        logger.info("%d blocks for %d steps of %d: the data repeats", len(blocks), steps, needed // steps)
    dataset = datasets.Dataset.from_dict(
        {"input_ids": blocks.tolist(), "attention_mask": torch.ones_like(blocks).tolist(), "labels": blocks.tolist()}
    )

    if masks is None:
        structured = is_structurally_pruned(getattr(model, "pruning_report", None) or {})
        masks = full_masks(model) if structured else extract_masks(model)
    masks = dict(masks)
    if not masks:
        logger.warning("The model has no pruned weights; recovery runs as plain fine-tuning.")
    was_training = model.training
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    eval_blocks = blocks[:loss_blocks]
    model.eval()
    loss_before = _mean_loss(model, eval_blocks, batch_size)

    if adapter != "none":
        from transformers import set_seed

        set_seed(seed)  # the adapter's random initialisation, so that a recovery repeats exactly
    if adapter == "lora":
        from peft import get_peft_model

        trained = get_peft_model(model, lora_config_for_masks(masks, model, r=adapter_rank or 16))
    elif adapter == "shira":
        from peft import get_peft_model

        trained = get_peft_model(model, shira_config_for_masks(masks, model, r=adapter_rank or 8, seed=seed))
    else:
        trained = model

    temporary = output_dir is None
    out = Path(tempfile.mkdtemp(prefix="hf_calibprune_recover_")) if temporary else Path(output_dir)
    arguments = dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=min(steps // 10, 50),
        weight_decay=0.0,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
    )
    if bf16 and not torch.cuda.is_available():
        arguments["use_cpu"] = True  # Trainer refuses bf16 autocast on CPU unless told to stay there
    arguments.update(training_args or {})
    callback = SparsityPreservingCallback(masks)
    try:
        if use_cache is not None:
            config.use_cache = False
        trainer = Trainer(
            model=trained,
            args=TrainingArguments(**arguments),
            train_dataset=dataset,
            data_collator=default_data_collator,
            callbacks=[callback, _logging_callback()],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        result = trainer.train()
        if adapter_dir is not None and adapter != "none":
            trained.save_pretrained(str(adapter_dir))
        merged = merge_adapter_preserving_sparsity(trained, masks) if adapter != "none" else trained
    finally:
        if callback.keeper is not None:  # training raised before on_train_end
            callback.keeper.detach()
        if use_cache is not None:
            config.use_cache = use_cache
        if temporary:
            shutil.rmtree(out, ignore_errors=True)

    merged.eval()
    check_masks(merged, masks)
    loss_after = _mean_loss(merged, eval_blocks, batch_size)
    merged.train(was_training)
    record = RecoveryRecord(
        steps=int(result.global_step),
        adapter=adapter,
        lora=adapter == "lora",
        learning_rate=float(learning_rate),
        seq_len=seq_len,
        batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        train_blocks=len(blocks),
        loss_blocks=len(eval_blocks),
        loss_before=loss_before,
        loss_after=loss_after,
        train_loss=float(result.training_loss) if math.isfinite(result.training_loss) else float("nan"),
        masked_weights=sum(int((~mask).sum()) for mask in masks.values()),
        sparsity=measured_sparsity(merged, masks),
        seconds=time.perf_counter() - started,
    )
    merged.recovery_record = record
    logger.info(
        "Recovery (%s, %d steps): loss %.4f -> %.4f, %d pruned weights kept at zero",
        adapter,
        record.steps,
        loss_before,
        loss_after,
        record.masked_weights,
    )
    return merged
