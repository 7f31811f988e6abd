"""Calibration studies: prune with several calibration choices, evaluate each, compare.

```python
from hf_calibprune.study import StudySettings, run_study

settings = StudySettings(model="path/to/model", methods=("wanda",), calibration=("c4", "gsm8k"),
                         formats=("plain", "icl"), eval=("wikitext2", "gsm8k"), num_samples=32, seq_len=256, limit=16)
result = run_study(settings, "study_out")
```
"""

from __future__ import annotations

from .grid import StudyPlan, StudyRun, StudySettings, plan_study
from .outputs import write_outputs
from .runner import StudyResult, run_study

__all__ = ["StudyPlan", "StudyResult", "StudyRun", "StudySettings", "plan_study", "run_study", "write_outputs"]
