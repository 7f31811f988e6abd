"""hf_calibprune as a transformers quantizer plugin (the only module that touches transformers' plugin API).

transformers' quantizer registry (``register_quantization_config`` / ``register_quantizer`` from
``transformers.quantizers``) is the public way for a library to act inside ``from_pretrained``. Registering
``quant_method="hf_calibprune"`` gives two things:

* ``AutoModelForCausalLM.from_pretrained(path, quantization_config=PruningConfig(...))`` loads the model
  normally, then prunes it with :class:`~hf_calibprune.CalibratedPruner` in ``postprocess_model``, which
  transformers calls after weights are loaded and the model is dispatched to its devices. The tokenizer for the
  calibration data is loaded from the same path.
* ``AutoModelForCausalLM.from_pretrained(compact_dir)`` reads a compact checkpoint (see
  :mod:`hf_calibprune.hub.compact`): a load operation rebuilds each dense weight from its bitmask / N:M
  companions while the weights stream in, so device maps and offloading work as for any checkpoint.

Fused Mixture-of-Experts parameters (``experts.gate_up_proj``) are compact under their own names (gpt-oss
saves them fused) or, where transformers splits them per expert on save (Mixtral: ``experts.0.w1.weight``), as
those per-expert weights, which the model's own converter merges after decompression; :func:`checkpoint_keys`
says which saved keys a parameter becomes.

Either way the model ends as a plain transformers model: the quantizer removes ``quantization_config``,
``hf_quantizer`` and ``is_quantized`` when it is done, so Trainer trains it and ``save_pretrained`` writes a
plain checkpoint. Registration runs once, when ``hf_calibprune`` is imported, and changes nothing else in
transformers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, _IdentityOp
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import CalibPruneError, CheckpointError
from ..hub import compact
from ..hub.formats import COMPACT_VERSION, QUANT_METHOD

__all__ = ["CompactSparseConfig", "CalibPruneQuantizer", "SparseDecompress", "checkpoint_keys", "register", "QUANT_METHOD"]

logger = logging.getLogger(__name__)

_WEIGHT = "weight"


def _serialized(parameter: str) -> list[str]:
    return [parameter] + [parameter + suffix for suffix in compact.SUFFIXES]


def checkpoint_keys(model: Any, parameters: list[str]) -> set[str]:
    """The keys ``model.save_pretrained`` writes for the named parameters.

    transformers 5 reverts its load-time weight conversions on save, so a fused ``experts.gate_up_proj`` of
    Mixtral is written as per-expert ``block_sparse_moe.experts.{i}.w1.weight`` and ``w3.weight``; gpt-oss keeps
    it fused. The conversion is run on ``meta`` tensors of the parameters' shapes (no data is read).
    """
    from transformers.core_model_loading import revert_weight_conversion

    placeholders = {}
    for name in parameters:
        try:
            value = model.get_parameter(name)
        except AttributeError:
            continue
        placeholders[name] = torch.empty(value.shape, dtype=value.dtype, device="meta")
    return set(revert_weight_conversion(model, placeholders)) if placeholders else set()


class CompactSparseConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a compact hf_calibprune checkpoint (read from its ``config.json``).

    Args:
        format (`str`, *optional*, defaults to `"compact"`): the checkpoint format.
        compact_version (`int`, *optional*, defaults to 1): layout version of the compact tensors.
        weights_file (`str`, *optional*, defaults to `"model.safetensors"`): the weights file (or index) to load.
        kwargs: other recorded facts (``size_ratio``, ``hf_calibprune_version``), kept as attributes.
    """

    def __init__(
        self,
        format: str = "compact",
        compact_version: int = COMPACT_VERSION,
        weights_file: str = "model.safetensors",
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.format = format
        self.compact_version = compact_version
        self.weights_file = weights_file
        kwargs.pop("quant_method", None)
        for key, value in kwargs.items():
            setattr(self, key, value)
        if int(compact_version) > COMPACT_VERSION:
            raise CheckpointError(
                f"This compact checkpoint uses layout version {compact_version}; this hf_calibprune reads up to "
                f"{COMPACT_VERSION}. Upgrade it: pip install -U hf_calibprune."
            )

    @property
    def dequantize(self) -> bool:
        # Loading always rebuilds plain dense weights.
        return True

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class SparseDecompress(ConversionOps):
    """Load operation: rebuild dense weights from compact companions (any other weight passes through).

    transformers hands it the tensors collected for one parameter, keyed by the serialized names
    (``weight``, ``weight_sparse_values``, ...; or, prepended to a model's own converter, by full patterns
    whose last component is one of them), each a tensor or a list of tensors.
    """

    def __init__(self, hf_quantizer: Any = None) -> None:
        self.hf_quantizer = hf_quantizer

    def __repr__(self) -> str:
        return "SparseDecompress"

    @staticmethod
    def _target_dtype(model: Any, name: str | None) -> torch.dtype | None:
        if model is None or name is None:
            return None
        try:
            return model.get_parameter(name).dtype
        except (AttributeError, KeyError, ValueError):
            return None

    @torch.no_grad()
    def convert(self, input_dict: dict[str, Any], full_layer_name: str | None = None, model: Any = None, **kwargs: Any):
        dtype = self._target_dtype(model, full_layer_name)
        groups: dict[str, dict[str, list[torch.Tensor]]] = {}
        for key, value in input_dict.items():
            split = compact.split_companion_key(key)
            base, suffix = split if split is not None else (key, "")
            groups.setdefault(base, {})[suffix] = value if isinstance(value, list) else [value]
        out: dict[str, Any] = {}
        for base, parts in groups.items():
            if set(parts) == {""}:
                tensors = parts[""]
            else:
                if "" in parts:
                    raise CheckpointError(
                        f"'{full_layer_name}' is stored both dense and compact in the checkpoint; re-save it."
                    )
                count = len(parts[compact.VALUES]) if compact.VALUES in parts else 0
                tensors = [
                    compact.decode_weight({s: t[i] for s, t in parts.items() if i < len(t)}, full_layer_name or base)
                    for i in range(max(count, 1))
                ]
            tensors = [t if dtype is None or not t.is_floating_point() else t.to(dtype) for t in tensors]
            out[base] = tensors
        if len(out) == 1 and full_layer_name is not None and full_layer_name.endswith("." + next(iter(out))):
            # The quantizer's own converter: name the result after the parameter it fills.
            (tensors,) = out.values()
            return {full_layer_name: tensors[0] if len(tensors) == 1 else tensors}
        return out

    @property
    def reverse_op(self) -> ConversionOps:
        # Saving writes the dense weights the model holds (the quantizer is gone by then anyway).
        return _IdentityOp()


def _check_compact_files(checkpoint_files: list[str] | None) -> set[str]:
    """Check that every compact tensor has consistent companions, before any weight is loaded; return the
    parameter names (the last component of each key: ``weight``, ``gate_up_proj``) stored compact.

    The safetensors headers, the tiny shape records and the bitmasks (an eighth of a byte per weight) are read:
    a bitmask whose count of set bits disagrees with its stored values is refused here, since transformers would
    wrap an error raised during the load itself in its own ``RuntimeError``.
    """
    from safetensors import safe_open

    parameters: set[str] = set()
    for path in checkpoint_files or []:
        if not str(path).endswith(".safetensors"):
            continue
        name = Path(path).name
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            groups: dict[str, set[str]] = {}
            for key in keys:
                split = compact.split_companion_key(key)
                if split is not None:
                    groups.setdefault(split[0], set()).add(split[1])
            parameters.update(base.rpartition(".")[2] for base in groups)
            for base, suffixes in groups.items():
                if compact.BITMASK not in suffixes and compact.NM_INDICES not in suffixes:
                    raise CheckpointError(
                        f"Compact tensor '{base}' in {name} lacks its bitmask ({base}{compact.BITMASK}) or N:M indices "
                        f"({base}{compact.NM_INDICES}): the checkpoint is incomplete or corrupted. Copy it again or "
                        "re-save it with save_sparse(format='compact')."
                    )
                layout = compact.BITMASK if compact.BITMASK in suffixes else compact.NM_INDICES
                needed = {compact.VALUES, compact.SHAPE, layout} | ({compact.NM} if layout == compact.NM_INDICES else set())
                missing = needed - suffixes
                if missing:
                    raise CheckpointError(
                        f"Compact tensor '{base}' in {name} lacks {', '.join(sorted(base + m for m in missing))}: the "
                        "checkpoint is incomplete or corrupted. Copy it again or re-save it with "
                        "save_sparse(format='compact')."
                    )
                if base in keys:
                    raise CheckpointError(f"'{base}' is stored both dense and compact in {name}; re-save it.")
                shape = [int(x) for x in handle.get_tensor(base + compact.SHAPE).reshape(-1).tolist()]
                numel = 1
                for size in shape:
                    numel *= size
                values = handle.get_slice(base + compact.VALUES).get_shape()
                if layout == compact.BITMASK:
                    mask = handle.get_slice(base + compact.BITMASK).get_shape()
                    ok = mask == [(numel + 7) // 8] and len(values) == 1 and values[0] <= numel
                    if ok:
                        bits = compact.unpack_bits(handle.get_tensor(base + compact.BITMASK), numel)
                        ok = int(bits.sum()) == values[0]
                else:
                    n, m = (int(x) for x in handle.get_tensor(base + compact.NM).reshape(-1).tolist())
                    indices = handle.get_slice(base + compact.NM_INDICES).get_shape()
                    kept = numel // m * n if m else -1
                    ok = (
                        len(shape) == 2
                        and 0 < n < m
                        and shape[1] % m == 0
                        and values == [shape[0], shape[1] // m * n]
                        and indices == [(kept + 3) // 4]
                    )
                if not ok:
                    raise CheckpointError(
                        f"Compact tensor '{base}' in {name}: its {layout.strip('_')} or values do not match its "
                        f"shape {shape}; the checkpoint is corrupted or mixes files of different saves. Re-save it."
                    )
    return parameters


class CalibPruneQuantizer(HfQuantizer):
    """transformers quantizer for ``quant_method="hf_calibprune"``: prunes after loading, or loads compact weights.

    With a :class:`~hf_calibprune.PruningConfig` passed as ``quantization_config`` it prunes the loaded model; with
    a compact checkpoint's :class:`CompactSparseConfig` it decompresses the weights. Both end with a plain model.
    """

    requires_calibration = False
    serialized_names = {_WEIGHT: _serialized(_WEIGHT)}

    def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.decompress = isinstance(quantization_config, CompactSparseConfig)
        if self.decompress and not self.pre_quantized:
            raise CheckpointError(
                "CompactSparseConfig describes a saved compact checkpoint and cannot be passed to from_pretrained; "
                "pass a PruningConfig to prune while loading."
            )
        if not self.decompress and self.pre_quantized:  # pragma: no cover - config.json always holds the compact config
            raise CheckpointError("A pre-quantized hf_calibprune checkpoint must carry a compact quantization_config.")

    # Loading -------------------------------------------------------------------------------------

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update_attn_implementation(self, config: Any) -> Any:
        # The compact config.json points `transformers_weights` at an install hint (so that plain transformers
        # stops with it); name the real weights file instead.
        if self.decompress:
            config.transformers_weights = self.quantization_config.weights_file
        return config

    def get_load_operations(self) -> dict[str, Any]:
        return {"dequantize": SparseDecompress} if self.decompress else {}

    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None, **kwargs: Any):
        if self.decompress:
            # Parameters other than `weight` stored compact (fused experts, e.g. gpt-oss `gate_up_proj`) get their own
            # converter; transformers builds the converters after this call.
            self.serialized_names = {
                parameter: _serialized(parameter) for parameter in {_WEIGHT, *_check_compact_files(checkpoint_files)}
            }
        return model

    def postprocess_model(self, model: Any, **kwargs: Any) -> Any:
        """Prune (``PruningConfig``) or finish a compact load, then leave a plain transformers model."""
        try:
            if self.decompress:
                _attach_provenance(model)
            else:
                self._prune(model)
        finally:
            self.remove_quantization_config(model)
            model.config.__dict__.pop("transformers_weights", None)
        return model

    def _prune(self, model: Any) -> None:
        from ..pruner import CalibratedPruner

        source = getattr(model.config, "name_or_path", None)
        tokenizer = None
        if source:
            try:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(source)
            except Exception as error:  # noqa: BLE001 - a method without calibration data needs no tokenizer
                logger.warning("No tokenizer could be loaded from '%s' (%s); pruning without one.", source, error)
        CalibratedPruner(self.quantization_config, tokenizer=tokenizer).prune(model)

    # Capabilities --------------------------------------------------------------------------------

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


def _attach_provenance(model: Any) -> None:
    """Attach ``pruning_config`` / ``pruning_report`` from a local compact checkpoint (best effort)."""
    source = getattr(model.config, "name_or_path", None)
    if not source or not Path(source).is_dir():
        return
    from ..hub.info import load_pruning_info

    try:
        info = load_pruning_info(source)
    except CalibPruneError as error:
        logger.info("No pruning provenance attached from %s: %s", source, error)
        return
    model.pruning_config = info.config
    model.pruning_report = info.report


def register() -> None:
    """Register the config class and quantizer with transformers under ``quant_method="hf_calibprune"`` (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is None:
        register_quantization_config(QUANT_METHOD)(CompactSparseConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is None:
        register_quantizer(QUANT_METHOD)(CalibPruneQuantizer)


register()
