"""Plain statements of the two pruning schedules and of Wanda and SparseGPT, for reference tests.

Nothing here uses hf_calibprune's engine, hooks, statistics or methods: the schedules run the whole transformers
model forward (one batch of every sample) with PyTorch hooks, activations are kept whole, and the statistics are
computed from them directly (``‖x_j‖₂`` with ``Tensor.norm``, the Gram matrix as ``XᵀX``).

* sequential: for each block k in order, run the model (blocks before k already pruned, block k dense) and record
  the inputs of block k's Linears; prune every Linear of block k from those inputs; block k + 1 then sees the
  outputs of the pruned block k.
* one-pass: run the model once; each Linear is pruned from its own input just before it computes, so later
  Linears and blocks see the outputs of already pruned ones.

The inputs the reference tests share live here too: a 3-block model whose activation norms decide the masks, and a
calibration set with more than 1,024 non-padding tokens per batch, partly padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from conftest import tiny_model

BLOCKS = 3
SAMPLES, LENGTH = 10, 144  # 1,440 tokens; a batch of 8 samples holds 1,132 non-padding ones
#: Tokens on which the engine measures the error of methods without a Gram matrix (docs/engine.md).
ERROR_TOKENS = 1024


def calibration_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: 10 samples of 144 tokens, two of them partly padding."""
    ids = torch.randint(4, 99, (SAMPLES, LENGTH), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, -20:] = 0
    mask[9, -100:] = 0
    return ids, mask


def spread_model(seed: int = 0) -> nn.Module:
    """A tiny 3-block Llama whose channel scales differ by 40x, so activation norms matter for every mask."""
    model = tiny_model("llama", seed=seed, num_hidden_layers=BLOCKS)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.model.layers:
            for norm in (block.input_layernorm, block.post_attention_layernorm):
                norm.weight.copy_(torch.linspace(0.1, 4.0, 32)[torch.randperm(32, generator=generator)])
    return model


@dataclass
class LinearTrace:
    """What the reference did to one Linear.

    ``chosen_from``: the non-padding inputs the mask was chosen from. ``pruned_pass``: the non-padding inputs the
    Linear received while its block ran with pruned weights (in sample order).
    """

    dense: torch.Tensor
    pruned: torch.Tensor
    mask: torch.Tensor
    chosen_from: torch.Tensor
    pruned_pass: torch.Tensor


def wanda_reference(weight: torch.Tensor, x: torch.Tensor, sparsity: float, pattern: str):
    """Wanda (arXiv 2306.11695): prune the lowest |W_ij|·‖x_j‖₂ in each row, or in each group of 4 for 2:4."""
    scores = weight.double().abs() * x.double().norm(dim=0)
    rows, cols = weight.shape
    if pattern == "2:4":
        groups = scores.reshape(rows, cols // 4, 4)
        lowest = groups.topk(2, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True).reshape(rows, cols)
    else:
        lowest = scores.topk(int(cols * sparsity), dim=1, largest=False).indices
        mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, True)
    return weight.masked_fill(mask, 0), mask


def fasterprune_reference(weight, gram, sparsity, pattern, block_size=128):
    """The reference SparseGPT column loop (IST-DASLab ``fasterprune``) written out plainly, with masks chosen
    per output row (each block's share of the row's count) as our default scope does. ``pattern`` is a
    :class:`SparsityPattern`-like object with ``n``, ``m`` and ``is_unstructured``."""
    n, m = (pattern.n, pattern.m) if not pattern.is_unstructured else (0, 0)
    w = weight.clone()
    rows, cols = w.shape
    h = gram.clone()
    h += 0.01 * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    total = int(cols * sparsity)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1, mask1 = torch.zeros_like(w1), torch.zeros_like(w1, dtype=torch.bool)
        if not m:
            count = total * i2 // cols - total * i1 // cols
            scores = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            mask1.scatter_(1, scores.topk(count, dim=1, largest=False).indices, True)
        for i in range(i2 - i1):
            if m and i % m == 0:
                scores = w1[:, i : i + m] ** 2 / torch.diag(hinv1)[i : i + m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + scores.topk(m - n, dim=1, largest=False).indices, True)
            q = w1[:, i].clone()
            q[mask1[:, i]] = 0
            e = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2], mask[:, i1:i2] = w1, mask1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w.masked_fill(mask, 0), mask


class _Pattern:
    def __init__(self, text: str) -> None:
        self.is_unstructured = text == "unstructured"
        self.n, self.m = (None, None) if self.is_unstructured else map(int, text.split(":"))


def prune_one(method: str, weight: torch.Tensor, x: torch.Tensor, sparsity: float, pattern: str):
    """``(pruned weight, mask)`` of one Linear from its non-padding inputs ``x`` (``[tokens, in_features]``)."""
    if method == "wanda":
        return wanda_reference(weight, x, sparsity, pattern)
    if method == "sparsegpt":
        x64 = x.double()
        pruned, mask = fasterprune_reference(weight.double(), x64.t() @ x64, sparsity, _Pattern(pattern))
        return pruned.to(weight.dtype), mask
    raise ValueError(method)


def _linears(model: nn.Module, block: int) -> dict[str, nn.Linear]:
    prefix = f"model.layers.{block}."
    return {name: m for name, m in model.named_modules() if name.startswith(prefix) and isinstance(m, nn.Linear)}


def _forward(model, linears, ids, attention_mask, before_linear) -> None:
    """One forward pass of every sample as one batch; ``before_linear(name, module, x)`` runs before each of
    ``linears`` computes, with ``x`` its non-padding inputs as ``[tokens, in_features]``."""
    keep = attention_mask.reshape(-1).bool()

    def hook(module, args, name):
        before_linear(name, module, args[0].detach().reshape(-1, args[0].shape[-1])[keep].clone())

    handles = [m.register_forward_pre_hook(lambda m, args, n=name: hook(m, args, n)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def _record_inputs(model, linears, ids, attention_mask) -> dict[str, torch.Tensor]:
    """Each Linear's non-padding inputs over one forward pass of every sample as one batch."""
    seen: dict[str, torch.Tensor] = {}
    _forward(model, linears, ids, attention_mask, lambda name, module, x: seen.setdefault(name, x))
    return seen


def prune_sequential(model, ids, attention_mask, method, pattern, sparsity) -> dict[str, LinearTrace]:
    """The sequential schedule, block by block (see the module docstring). Prunes ``model`` in place."""
    traces = {}
    for block in range(model.config.num_hidden_layers):
        linears = _linears(model, block)
        chosen_from = _record_inputs(model, linears, ids, attention_mask)  # block dense, predecessors pruned
        dense = {}
        for name, module in linears.items():
            dense[name] = module.weight.detach().clone()
            pruned, mask = prune_one(method, dense[name], chosen_from[name], sparsity, pattern)
            with torch.no_grad():
                module.weight.copy_(pruned)
            traces[name] = LinearTrace(dense[name], module.weight.detach().clone(), mask, chosen_from[name], None)
        pruned_pass = _record_inputs(model, linears, ids, attention_mask)
        for name in linears:
            traces[name].pruned_pass = pruned_pass[name]
    return traces


def prune_one_pass(model, ids, attention_mask, method, pattern, sparsity) -> dict[str, LinearTrace]:
    """The one-pass schedule: one forward of every sample, each Linear pruned in its pre-hook. Prunes in place."""
    traces = {}

    def prune_before_compute(name, module, x):
        if name in traces:
            return
        dense = module.weight.detach().clone()
        pruned, mask = prune_one(method, dense, x, sparsity, pattern)
        with torch.no_grad():
            module.weight.copy_(pruned)
        traces[name] = LinearTrace(dense, module.weight.detach().clone(), mask, x, x)

    linears = {}
    for block in range(model.config.num_hidden_layers):
        linears.update(_linears(model, block))
    _forward(model, linears, ids, attention_mask, prune_before_compute)
    return traces


def relative_error(trace: LinearTrace, x: torch.Tensor) -> float:
    """``‖WX − ŴX‖² / ‖WX‖²`` over the rows of ``x``, in float64."""
    x = x.double()
    reference = x @ trace.dense.double().t()
    return float((x @ (trace.dense - trace.pruned).double().t()).square().sum() / reference.square().sum())


def error_as_reported(trace: LinearTrace, method: str) -> float:
    """The reconstruction error as docs/engine.md defines it: over every token the mask was chosen from for methods
    with a Gram matrix (SparseGPT), else over the first 1,024 non-padding tokens of the pass with pruned weights."""
    if method == "sparsegpt":
        return relative_error(trace, trace.chosen_from)
    return relative_error(trace, trace.pruned_pass[:ERROR_TOKENS])
