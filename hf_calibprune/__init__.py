"""hf_calibprune: calibration-aware post-training pruning for Hugging Face transformers models.

```python
from hf_calibprune import PruningConfig, CalibratedPruner

config = PruningConfig(method="wanda", sparsity=0.5, calibration="calib.jsonl", num_samples=128, seq_len=2048)
model = CalibratedPruner(config, tokenizer=tok).prune(model)
```
"""

from __future__ import annotations

from .calibration import CalibrationConfig
from .config import PruningConfig
from .errors import (
    AcceleratorMemoryError,
    CalibPruneError,
    CalibrationError,
    CheckpointError,
    ConfigError,
    ModelStructureError,
    NumericalError,
)
from .hub import load_pruning_info, push_to_hub, save_sparse
from .integrations import transformers_plugin as _transformers_plugin  # noqa: F401 - registers quant_method "hf_calibprune"
from .pruner import CalibratedPruner
from .report import PruningReport
from .version import __version__

__all__ = [
    "AcceleratorMemoryError",
    "CalibPruneError",
    "CalibratedPruner",
    "CalibrationConfig",
    "CalibrationError",
    "CheckpointError",
    "ConfigError",
    "ModelStructureError",
    "NumericalError",
    "PruningConfig",
    "PruningReport",
    "__version__",
    "load_pruning_info",
    "push_to_hub",
    "save_sparse",
]
