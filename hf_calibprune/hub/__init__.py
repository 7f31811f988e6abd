"""Saving, compact sparse checkpoints, model cards and Hub publishing.

* :func:`save_sparse` writes a pruned model (``format="dense"`` or ``"compact"``), ``pruning_config.json``,
  ``pruning_report.json`` and the model card, atomically.
* :func:`push_to_hub` publishes a checkpoint directory (or a model) in one commit.
* :func:`load_pruning_info` reads the provenance back.
"""

from __future__ import annotations

from .card import build_model_card
from .info import PruningInfo, load_pruning_info
from .push import push_to_hub
from .saving import save_sparse

__all__ = ["save_sparse", "push_to_hub", "load_pruning_info", "PruningInfo", "build_model_card"]
