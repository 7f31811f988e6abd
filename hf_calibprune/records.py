"""Plain records of what pruning did, shared by the engine (which measures) and the report (which keeps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerRecord", "BlockRecord"]


@dataclass
class LayerRecord:
    """One pruned Linear.

    Args:
        name (`str`): module path in the model (``"model.layers.0.self_attn.q_proj"``).
        block (`int`): index of its decoder block.
        shape (`list[int]`): ``[out_features, in_features]``.
        requested_sparsity (`float`): the target handed to the method.
        measured_sparsity (`float`): fraction of exact zeros in the weight after pruning.
        reconstruction_error (`float`, *optional*): ``‖WX − ŴX‖² / ‖WX‖²`` over calibration tokens, or
            ``None`` when no calibration data was used.
        seconds (`float`): time spent choosing the mask and updating the weight.
        info (`dict`): method facts, e.g. ``{"dampening": 0.01}``.
    """

    name: str
    block: int
    shape: list[int]
    requested_sparsity: float
    measured_sparsity: float
    reconstruction_error: float | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BlockRecord:
    """One decoder block: its requested and measured sparsity over its pruned Linears, and wall time."""

    index: int
    name: str
    requested_sparsity: float
    measured_sparsity: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
