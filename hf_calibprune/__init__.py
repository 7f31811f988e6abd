"""hf_calibprune: calibration-aware post-training pruning for Hugging Face transformers models.

```python
from hf_calibprune import PruningConfig, CalibratedPruner

config = PruningConfig(method="wanda", sparsity=0.5, calibration="calib.jsonl", num_samples=128, seq_len=2048)
model = CalibratedPruner(config, tokenizer=tok).prune(model)
```
"""

from __future__ import annotations

from .config import PruningConfig
from .errors import (
    CalibPruneError,
    CalibrationError,
    CheckpointError,
    ConfigError,
    ModelStructureError,
    NumericalError,
)
from .pruner import CalibratedPruner
from .report import PruningReport
from .version import __version__

__all__ = [
    "CalibPruneError",
    "CalibratedPruner",
    "CalibrationError",
    "CheckpointError",
    "ConfigError",
    "ModelStructureError",
    "NumericalError",
    "PruningConfig",
    "PruningReport",
    "__version__",
]
