"""``CalibratedPruner.prune`` for the structured patterns: plan, calibrate, walk, cut, report."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from torch import nn

from .engine import EngineOptions
from .engine.distributed import init_distributed, is_main_process
from .engine.structured import StructuredEngine
from .methods import build_method
from .models import check_decoder_only
from .report import PruningReport
from .sparsity import uniform_layer_sparsities

if TYPE_CHECKING:
    from .pruner import CalibratedPruner

__all__ = ["prune_structured"]

logger = logging.getLogger(__name__)


def prune_structured(pruner: CalibratedPruner, model: nn.Module) -> nn.Module:
    """Remove heads and MLP channels (``pattern="channels"``), decoder blocks (``"blocks"``) or routed experts
    (``"experts"``) from ``model``.

    Everything that can be refused (a sparsity that removes every head or expert, an architecture without a known
    layout) is refused before calibration data is built. With the pruner's ``checkpoint_dir`` the walk saves each
    step and a rerun continues from the last one saved.
    """
    from .pruner import _check_token_ids, _process_shard

    config = pruner.config
    check_decoder_only(model)
    init_distributed()
    method = build_method(config.method, config.method_options)
    engine = StructuredEngine(
        model,
        EngineOptions(
            batch_size=config.batch_size,
            measure_error=False,
            activation_device=config.activation_device,
            execution_device=config.execution_device,
            progress=pruner.progress and is_main_process(),
        ),
    )
    if config.pattern == "channels":
        engine.plan_width(method, config.sparsity)
        needs_data = method.needs != "none"
    elif config.pattern == "experts":
        needs_data = method.needs != "none" and engine.plan_experts(method, config.sparsity)[0] > 0
    else:
        engine.block_count(config.sparsity)
        needs_data = True
    block_names = [engine.layout.block_name(i) for i in range(len(engine.layout.blocks))]
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    samples = None
    try:
        if needs_data:
            pruner._check_seq_len(model)
            pruner._check_vocabulary(model)
            samples = pruner._calibration_samples(model)
            _check_token_ids(samples.input_ids, model)
        checkpoint = pruner._open_checkpoint(model, engine, samples)
        shard = _process_shard(samples) if samples is not None else None
        captured = engine.capture(shard.input_ids, shard.attention_mask) if shard is not None else None
        if config.pattern == "channels":
            result = engine.remove_channels(method, config.sparsity, captured, checkpoint=checkpoint)
        elif config.pattern == "experts":
            result = engine.remove_experts(method, config.sparsity, captured, checkpoint=checkpoint)
        else:
            result = engine.remove_blocks(method, config.sparsity, captured, shard.input_ids, shard.attention_mask,
                                          checkpoint=checkpoint)
    finally:
        model.train(was_training)
    report = PruningReport(
        method=config.method,
        pattern=config.pattern,
        requested_sparsity=config.sparsity,
        overall_sparsity=result.structure["removed_fraction"],
        layers=result.layers,
        blocks=result.blocks,
        calibration=samples.fingerprint if samples is not None else None,
        layer_sparsity=uniform_layer_sparsities(block_names, config.sparsity),
        seconds=time.perf_counter() - started,
        config=config.to_dict(),
        structure=result.structure,
    )
    model.pruning_config = config
    model.pruning_report = report
    logger.info(
        "Removed %.4f of the decoder parameters (%d -> %d) in %.1f s.",
        report.overall_sparsity,
        result.structure["parameters_before"],
        result.structure["parameters_after"],
        report.seconds,
    )
    return model
