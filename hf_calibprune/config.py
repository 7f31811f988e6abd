"""``PruningConfig``: what to prune, how, and with which calibration data; validated at construction."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ._io import read_json, write_json_atomic
from .errors import ConfigError
from .methods import METHODS, build_method
from .reconstruction import RECONSTRUCTORS, BlockReconstructor, build_reconstructor
from .refinement import REFINERS, build_refiner
from .registry import suggest
from .sparsity import SparsityPattern, parse_pattern
from .structured import STRUCTURED_PATTERNS
from .version import __version__

__all__ = ["PruningConfig", "CONFIG_NAME"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "pruning_config.json"
_VERSION_KEY = "hf_calibprune_version"
_ALLOCATIONS = ("uniform", "owl")
_SCHEDULES = ("sequential", "one-pass")
_MOE_CALIBRATIONS = ("routed", "all")


@dataclass
class PruningConfig:
    """How to prune a model.

    Args:
        method (`str`, *optional*, defaults to `"wanda"`): a registered method: ``"magnitude"``, ``"wanda"``,
            ``"sparsegpt"``, ``"ria"``; for structured patterns ``"flap"`` (channels), ``"block-influence"``,
            ``"block-perplexity"`` (blocks) and ``"reap"`` (experts) (see ``hf_calibprune.methods.METHODS``).
        sparsity (`float`, *optional*): fraction of each pruned Linear's weights set to zero, in [0, 1); for
            ``"channels"`` and ``"blocks"``, the fraction of the decoder blocks' parameters removed; for
            ``"experts"``, the fraction of the routed experts removed from each MoE block
            (``round(sparsity × num_experts)``). Defaults to what an N:M ``pattern`` implies, else 0.5.
        pattern (`str`, *optional*, defaults to `"unstructured"`): ``"unstructured"`` or ``"N:M"`` (N weights kept
            in every M consecutive inputs, e.g. ``"2:4"``); or structured: ``"channels"`` (remove attention
            key/value groups with their query heads and MLP channels, the same count in every block),
            ``"blocks"`` (remove whole decoder blocks) or ``"experts"`` (remove whole routed experts of every
            Mixture-of-Experts block, with their router rows). Structured pruning returns a smaller dense model.
        calibration (`str | list[str] | CalibrationConfig | datasets.Dataset`, *optional*, defaults to `"self"`):
            a catalogue source name (``"c4"``, ``"gsm8k:icl"``, ``"self"``), a local ``.jsonl``/``.json``/``.txt``
            file, a list of texts, a ``datasets.Dataset`` with a ``text`` column, or a ``CalibrationConfig``.
        num_samples (`int`, *optional*, defaults to 128): calibration sequences.
        seq_len (`int`, *optional*, defaults to 2048): tokens per calibration sequence.
        seed (`int`, *optional*, defaults to 0): seed for sampling calibration windows.
        batch_size (`int`, *optional*, defaults to 8): calibration sequences per block call.
        allocation (`str`, *optional*, defaults to `"uniform"`): per-block sparsity: ``"uniform"`` or ``"owl"``
            (outlier-weighted layerwise sparsity; unstructured patterns only).
        owl_lambda (`float`, *optional*, defaults to 0.08): OWL's maximum deviation from ``sparsity``.
        owl_threshold (`float`, *optional*, defaults to 5.0): OWL's outlier threshold M (score > M × mean).
        schedule (`str`, *optional*, defaults to `"sequential"`): ``"sequential"`` (reference: each block runs
            twice) or ``"one-pass"`` (each block runs once; each Linear pruned from all samples just before it computes).
        method_options (`dict`, *optional*): options of the method, e.g. ``{"block_size": 128}`` for SparseGPT.
        ignore (`list[str]`, *optional*): Linears whose name contains any entry stay dense (``["mlp.down_proj"]``).
        measure_error (`bool`, *optional*, defaults to `True`): record each Linear's reconstruction error.
        activation_device (`str`, *optional*): keep calibration activations on this device between blocks.
        refine (`str`, *optional*): a mask refiner run after the method: ``"dsnot"`` or ``"swaps"``.
        refine_options (`dict`, *optional*): options of the refiner.
        reconstruct (`str`, *optional*): re-fit the kept weights after the method and refiner, the mask fixed:
            ``"admm"`` per Linear from its Gram matrix, or ``"block"`` per decoder block towards the dense model's
            block outputs (sequential schedule; see ``hf_calibprune.reconstruction.RECONSTRUCTORS``). A Linear
            (a block) keeps the method's weights where the re-fit would not lower its error.
        reconstruct_options (`dict`, *optional*): options of the reconstructor, e.g. ``{"rho": 0.3,
            "max_iterations": 100}`` for ADMM, ``{"epochs": 1, "learning_rate": 1e-3}`` for block.
        execution_device (`str`, *optional*): bring one block at a time to this device (``"cuda"``, ``"cuda:1"``)
            and move it back afterwards, so a model kept on CPU needs accelerator memory for one block plus
            activations. Blocks dispatched by accelerate (``device_map=...``) run where their hooks place them.
            Under ``accelerate launch``/``torchrun``, ``"cuda"`` means each process's own GPU.
        moe_calibration (`str`, *optional*, defaults to `"routed"`): Mixture-of-Experts statistics: each expert's
            from the tokens the router sends it (``"routed"``), or from every calibration token (``"all"``: each
            expert also runs on every token for statistics only; the block's output is unchanged).
        min_expert_tokens (`int`, *optional*, defaults to 128): under ``"routed"``, an expert routed fewer
            calibration tokens than this (over all samples and processes) gets the ``"all"`` statistics instead.
        strict (`bool`, *optional*, defaults to `False`): raise instead of warning when a decoder block holds
            weights the engine cannot prune (they would stay dense).
    """

    # Lets `from_pretrained(..., quantization_config=PruningConfig(...))` find our transformers plugin.
    quant_method: ClassVar[str] = "hf_calibprune"

    method: str = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"
    calibration: Any = "self"
    num_samples: int = 128
    seq_len: int = 2048
    seed: int = 0
    batch_size: int = 8
    allocation: str = "uniform"
    owl_lambda: float = 0.08
    owl_threshold: float = 5.0
    schedule: str = "sequential"
    method_options: dict[str, Any] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    measure_error: bool = True
    activation_device: str | None = None
    refine: str | None = None
    refine_options: dict[str, Any] = field(default_factory=dict)
    reconstruct: str | None = None
    reconstruct_options: dict[str, Any] = field(default_factory=dict)
    execution_device: str | None = None
    moe_calibration: str = "routed"
    min_expert_tokens: int = 128
    strict: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.method, str):
            raise ConfigError(f"`method={self.method!r}` must be a string such as 'wanda'.")
        METHODS.check(self.method)
        structured = isinstance(self.pattern, str) and self.pattern.strip().lower() in STRUCTURED_PATTERNS
        pattern = SparsityPattern() if structured else parse_pattern(self.pattern)
        self.pattern = self.pattern.strip().lower() if structured else str(pattern)
        self.sparsity = self._resolve_sparsity(pattern)
        self._check_method_pattern(pattern)
        for name in ("num_samples", "seq_len", "batch_size", "min_expert_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"`{name}={value!r}` must be a whole number of at least 1.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"`seed={self.seed!r}` must be an integer.")
        self._check_choice("allocation", _ALLOCATIONS)
        self._check_choice("schedule", _SCHEDULES)
        self._check_choice("moe_calibration", _MOE_CALIBRATIONS)
        for name, example in (("owl_lambda", 0.08), ("owl_threshold", 5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"`{name}={value!r}` must be a finite number, such as {example}.")
        if self.allocation == "owl":
            self._check_owl(pattern)
        if structured:
            self._check_structured()
        if not isinstance(self.method_options, dict):
            raise ConfigError(f"`method_options={self.method_options!r}` must be a dict of option name to value.")
        build_method(self.method, self.method_options)
        if self.refine is not None and not isinstance(self.refine, str):
            raise ConfigError(f"`refine={self.refine!r}` must be a refiner name such as 'dsnot', or None.")
        if not isinstance(self.refine_options, dict):
            raise ConfigError(f"`refine_options={self.refine_options!r}` must be a dict of option name to value.")
        if self.refine is not None:
            REFINERS.check(self.refine)
            build_refiner(self.refine, self.refine_options)
        elif self.refine_options:
            raise ConfigError("`refine_options` is set but `refine` is not; pass refine='dsnot' or 'swaps'.")
        self._check_reconstruct()
        if not isinstance(self.ignore, (list, tuple)) or not all(isinstance(item, str) for item in self.ignore):
            raise ConfigError(f"`ignore={self.ignore!r}` must be a list of Linear name fragments.")
        self.ignore = list(self.ignore)
        if isinstance(self.calibration, tuple):
            self.calibration = list(self.calibration)
        elif isinstance(self.calibration, dict):  # a CalibrationConfig spelled as a dict (YAML, JSON)
            from .calibration import CalibrationConfig

            self.calibration = CalibrationConfig.from_dict(self.calibration)
        _check_calibration(self.calibration)
        _check_device("execution_device", self.execution_device)
        _check_device("activation_device", self.activation_device)
        for name in ("measure_error", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"`{name}={getattr(self, name)!r}` must be True or False.")

    def _resolve_sparsity(self, pattern) -> float:
        implied = pattern.implied_sparsity
        if self.sparsity is None:
            return 0.5 if implied is None else implied
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise ConfigError(f"`sparsity={self.sparsity!r}` must be a number in [0, 1); pass a fraction such as 0.5.")
        sparsity = float(self.sparsity)
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"`sparsity={self.sparsity}` is outside [0, 1); pass a fraction such as 0.5.")
        if implied is not None and abs(sparsity - implied) > 1e-9:
            raise ConfigError(
                f"`sparsity={self.sparsity}` contradicts `pattern='{pattern}'`, which prunes exactly {implied:g}; "
                f"drop `sparsity` or pass {implied:g}."
            )
        return sparsity

    def _check_method_pattern(self, pattern) -> None:
        kind = self.pattern if self.pattern in STRUCTURED_PATTERNS else "unstructured" if pattern.is_unstructured else "N:M"
        supported = METHODS.get(self.method).patterns
        if kind not in supported:
            fits = [name for name in METHODS.names() if kind in METHODS.get(name).patterns]
            raise ConfigError(
                f"`method='{self.method}'` does not prune `pattern='{self.pattern}'`; it takes pattern "
                f"{' or '.join(repr(p) for p in supported)}. For pattern='{self.pattern}' use method "
                f"{' or '.join(repr(m) for m in fits)}."
            )

    def _check_structured(self) -> None:
        """Options that shape per-weight masks have no meaning when whole structures go."""
        if self.refine is not None:
            raise ConfigError(
                f"`refine='{self.refine}'` swaps weights inside a mask, but `pattern='{self.pattern}'` removes whole "
                "structures; drop `refine` or use pattern='unstructured' or 'N:M'."
            )
        if self.schedule != "sequential":
            raise ConfigError(f"`schedule='{self.schedule}'` applies to mask patterns; pattern='{self.pattern}' runs sequentially, drop it.")
        if self.ignore:
            raise ConfigError(
                f"`ignore={self.ignore}` cannot keep single Linears whole under pattern='{self.pattern}' (a structure "
                "spans several Linears); drop `ignore`."
            )

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(
                f"`{name}={value!r}` is not one of {', '.join(choices)}.{suggest(str(value), list(choices))}"
            )

    def _check_reconstruct(self) -> None:
        if self.reconstruct is not None and not isinstance(self.reconstruct, str):
            raise ConfigError(f"`reconstruct={self.reconstruct!r}` must be a reconstructor name such as 'admm', or None.")
        if not isinstance(self.reconstruct_options, dict):
            raise ConfigError(
                f"`reconstruct_options={self.reconstruct_options!r}` must be a dict of option name to value."
            )
        if self.reconstruct is not None:
            RECONSTRUCTORS.check(self.reconstruct)
            if isinstance(build_reconstructor(self.reconstruct, self.reconstruct_options), BlockReconstructor):
                if self.schedule != "sequential":
                    raise ConfigError(
                        f"`reconstruct='{self.reconstruct}'` runs each block again after pruning it, which the "
                        f"sequential schedule does; drop `schedule='{self.schedule}'`."
                    )
        elif self.reconstruct_options:
            raise ConfigError("`reconstruct_options` is set but `reconstruct` is not; pass reconstruct='admm'.")

    def _check_owl(self, pattern) -> None:
        if self.pattern in STRUCTURED_PATTERNS:
            raise ConfigError(
                f"`allocation='owl'` varies sparsity per block, but `pattern='{self.pattern}'` removes the same count "
                "from every block so that the pruned model has one ordinary config; use allocation='uniform'."
            )
        if not pattern.is_unstructured:
            raise ConfigError(
                f"`allocation='owl'` varies sparsity per block, which `pattern='{pattern}'` fixes; "
                "use pattern='unstructured' or allocation='uniform'."
            )
        if not 0.0 <= self.owl_lambda <= min(self.sparsity, 1.0 - self.sparsity):
            raise ConfigError(
                f"`owl_lambda={self.owl_lambda}` must keep every block's sparsity within [0, 1): pass a value in "
                f"[0, {min(self.sparsity, 1.0 - self.sparsity):g}] such as 0.08."
            )
        if self.owl_threshold <= 0:
            raise ConfigError(f"`owl_threshold={self.owl_threshold}` must be positive, such as 5.")

    # Serialization -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, including the library version that wrote it."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["calibration"] = _calibration_to_json(self.calibration)
        data[_VERSION_KEY] = __version__
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        """Build from :meth:`to_dict` output. Unknown keys are an error, unless a newer version wrote them."""
        data = dict(data)
        writer_version = data.pop(_VERSION_KEY, None)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in data if key not in known]
        if unknown and _is_newer(writer_version):
            logger.warning(
                "Dropping keys %s written by hf_calibprune %s (this is %s).", unknown, writer_version, __version__
            )
            unknown = []
            data = {k: v for k, v in data.items() if k in known}
        if unknown:
            key = unknown[0]
            raise ConfigError(f"Unknown PruningConfig key '{key}'.{suggest(key, known)} Valid keys: {', '.join(known)}.")
        if "calibration" in data:
            data["calibration"] = _calibration_from_json(data["calibration"])
        return cls(**data)

    def to_json_string(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``pruning_config.json`` into ``save_directory`` (atomically)."""
        return write_json_atomic(Path(save_directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PruningConfig:
        """Read a config from a directory holding ``pruning_config.json``, or from a ``.json``/``.yaml`` file."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if path.suffix in (".yaml", ".yml"):
            import yaml

            if not path.is_file():
                raise ConfigError(f"config file not found: {path}.")
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as error:
                raise ConfigError(f"{path} is not valid YAML: {error}") from error
        else:
            data = read_json(path, "pruning config")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of PruningConfig fields, not {type(data).__name__}.")
        return cls.from_dict(data)


def _is_newer(version: str | None) -> bool:
    if not version:
        return False
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) > Version(__version__)
    except InvalidVersion:
        return False


def _calibration_to_json(calibration: Any) -> Any:
    if calibration is None or isinstance(calibration, (str, list)):
        return calibration
    if hasattr(calibration, "to_dict") and type(calibration).__name__ == "CalibrationConfig":
        return {"calibration_config": calibration.to_dict()}
    if isinstance(calibration, os.PathLike):
        return os.fspath(calibration)
    return {"in_memory": type(calibration).__name__, "fingerprint": getattr(calibration, "_fingerprint", None)}


def _calibration_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "calibration_config" in value:
        from .calibration import CalibrationConfig

        return CalibrationConfig.from_dict(value["calibration_config"])
    if isinstance(value, dict) and "in_memory" in value:
        raise ConfigError(
            f"this config was made with an in-memory {value['in_memory']} as calibration data, which is not saved; "
            "pass `calibration=` again (a Dataset, a list of texts, or a file path)."
        )
    return value


def _check_device(name: str, value: Any) -> None:
    if value is None:
        return
    import torch

    try:
        if not isinstance(value, str):
            raise TypeError
        torch.device(value)
    except (TypeError, RuntimeError) as error:
        raise ConfigError(f"`{name}={value!r}` is not a torch device; pass a string such as 'cuda', 'cuda:0' or 'cpu'.") from error


def _check_calibration(calibration: Any) -> None:
    if isinstance(calibration, os.PathLike):
        return
    if isinstance(calibration, (bool, int, float, bytes)):
        raise ConfigError(
            f"`calibration={calibration!r}` must be a source name such as 'c4' or 'self', a file path, a list of "
            "texts, a datasets.Dataset or a CalibrationConfig."
        )
    if isinstance(calibration, list):
        if not calibration or not all(isinstance(item, str) for item in calibration):
            raise ConfigError(
                "`calibration` as a list must hold text strings (or catalogue names such as 'gsm8k:icl'), "
                "and not be empty."
            )
        return
    if isinstance(calibration, str):
        if not calibration.strip():
            raise ConfigError("`calibration=''` is empty; pass a source name such as 'c4' or 'self', or a file path.")
        _check_source_name(calibration)


def _check_source_name(spec: str) -> None:
    """A string that is neither an existing path nor path-like must name a registered source."""
    if os.path.exists(spec) or os.sep in spec or "/" in spec or Path(spec).suffix in (".jsonl", ".json", ".txt", ".tsv"):
        return
    try:
        from .calibration import SOURCES
        from .calibration.config import parse_spec
    except ImportError:
        return
    parse_spec(spec)  # an unknown format ('gsm8k:icll') is answered here, with a did-you-mean
    name = spec.split(":", 1)[0]
    if name not in SOURCES:
        raise ConfigError(
            f"`calibration='{spec}'` is neither a file nor a known source.{suggest(name, SOURCES.names())} "
            f"Known sources: {', '.join(SOURCES.names())}; or pass a path to a .jsonl/.txt file."
        )
