"""REAP's saliency of each routed expert, gathered while a decoder block runs on calibration data.

A fused experts module is called with the routing its router chose: ``experts(hidden, index, weights)``. A
forward pre-hook reads that call and, for every non-padding token and each of its ``top_k`` slots, computes the
chosen expert's output on the token alone (the module called once more with that single expert and a routing
weight of 1, so the output is ``f_e(x)`` unscaled; it is discarded and the block's output is unchanged). The
term ``g · ‖f_e(x)‖₂``, with ``g`` the routing weight the block applies, is summed per expert with the count of
routed tokens; the saliency is their quotient (:func:`~hf_calibprune.structured.routed_saliency`).

Experts kept as an ``nn.ModuleList`` are called by the MoE module's own code, which applies the routing weights
itself. There, after each call, the MoE module runs once more per expert with that expert's output replaced by
zeros: the difference of the two outputs at a token is exactly ``g · f_e(x)`` where ``e`` was routed the token,
and exactly zero elsewhere (the other experts' terms are summed in the same order). This costs ``num_experts``
extra MoE calls per batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelStructureError
from ..models import MoeBlock
from ..structured import routed_saliency
from .distributed import all_reduce_sums
from .experts import routing_arguments
from .hooks import HookSet

__all__ = ["SaliencyCollector"]

# Routed (token, expert) pairs computed per extra experts call, to bound the memory of the outputs.
_ROWS_PER_CALL = 4096


class SaliencyCollector(HookSet):
    """Sums REAP's terms and routed-token counts per expert of every MoE module of a block.

    Args:
        block (`nn.Module`): the decoder block.
        moes (`list[MoeBlock]`): its MoE modules (fused experts or an ``nn.ModuleList``).
    """

    def __init__(self, block: nn.Module, moes: list[MoeBlock]) -> None:
        super().__init__()
        self.sums = {moe.name: torch.zeros(moe.num_experts, dtype=torch.float64) for moe in moes}
        self.tokens = {moe.name: torch.zeros(moe.num_experts, dtype=torch.float64) for moe in moes}
        for moe in moes:
            if moe.fused is not None:
                hook = moe.fused.module.register_forward_pre_hook(self._make_hook(moe), with_kwargs=True)
            else:
                hook = block.get_submodule(moe.name).register_forward_hook(self._make_list_hook(moe), with_kwargs=True)
            self._handles.append(hook)

    def _keep(self, tokens: int, device: torch.device) -> torch.Tensor | None:
        """Which of ``tokens`` flattened rows are real tokens (``None``: all of them)."""
        mask = self.token_mask
        if mask is None or mask.numel() != tokens:
            return None
        return mask.reshape(-1).to(device)

    def _make_hook(self, moe: MoeBlock):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden, index, weights = routing_arguments(args, kwargs)
            if weights is None:
                raise ModelStructureError(
                    f"{type(module).__name__} was called without routing weights; REAP needs the gate values."
                )
            tokens = hidden.reshape(-1, hidden.shape[-1])
            index = index.reshape(tokens.shape[0], -1)
            weights = weights.reshape(tokens.shape[0], -1)
            keep = self._keep(tokens.shape[0], tokens.device)
            if keep is not None:
                tokens, index, weights = tokens[keep], index[keep], weights[keep]
            self._add(module, moe, tokens, index.reshape(-1), weights.reshape(-1), index.shape[1])

        return hook

    def _make_list_hook(self, moe: MoeBlock):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output) -> None:
            full = _hidden_of(output)
            full = full.reshape(-1, full.shape[-1])
            keep = self._keep(full.shape[0], full.device)
            for expert, expert_module in enumerate(module.experts):
                handle = expert_module.register_forward_hook(_zero_output)
                try:
                    with torch.no_grad():
                        without = _hidden_of(module.forward(*args, **kwargs))  # .forward: this hook stays out of it
                finally:
                    handle.remove()
                terms = (full - without.reshape(full.shape)).double().norm(dim=-1)
                terms = terms if keep is None else terms[keep]
                self.sums[moe.name][expert] += float(terms.sum())
                self.tokens[moe.name][expert] += int((terms > 0).sum())

        return hook

    def _add(self, module: nn.Module, moe: MoeBlock, tokens, experts, gates, top_k: int) -> None:
        routed = (experts >= 0) & (experts < moe.num_experts)  # some routers mark unused slots past the last expert
        source = torch.arange(tokens.shape[0], device=tokens.device).repeat_interleave(top_k)[routed]
        experts, gates = experts[routed].long(), gates[routed]
        terms = []
        with torch.no_grad():
            for start in range(0, experts.numel(), _ROWS_PER_CALL):
                chosen = experts[start : start + _ROWS_PER_CALL]
                rows = tokens[source[start : start + _ROWS_PER_CALL]]
                ones = torch.ones(chosen.shape[0], 1, dtype=gates.dtype, device=rows.device)
                outputs = module.forward(rows, chosen.unsqueeze(1), ones)  # .forward: this hook stays out of it
                terms.append(routed_saliency(gates[start : start + _ROWS_PER_CALL], outputs))
        if terms:
            cpu = experts.cpu()
            self.sums[moe.name].index_add_(0, cpu, torch.cat(terms).double().cpu())
            self.tokens[moe.name] += torch.bincount(cpu, minlength=moe.num_experts).double()

    def all_reduce(self) -> None:
        """Sum the terms and counts over processes (once, after the block ran over every batch)."""
        for name in sorted(self.sums):
            count = self.sums[name].numel()
            total = all_reduce_sums(self.sums[name].tolist() + self.tokens[name].tolist())
            self.sums[name] = torch.tensor(total[:count], dtype=torch.float64)
            self.tokens[name] = torch.tensor(total[count:], dtype=torch.float64)

    def saliency(self, name: str) -> torch.Tensor:
        """REAP's score of each expert of MoE module ``name``: the mean term over its routed tokens (0 if none)."""
        return (self.sums[name] / self.tokens[name].clamp(min=1)).float()


def _hidden_of(output) -> torch.Tensor:
    """The hidden states of a MoE module's output (some return ``(hidden, router_logits)``)."""
    return output[0] if isinstance(output, tuple) else output


def _zero_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(output)
