"""Evaluation of (pruned) models: perplexity, the study's few-shot accuracy, and lm-evaluation-harness.

```python
from hf_calibprune.evaluation import evaluate_model, perplexity

ppl = perplexity(model, tokenizer, "wikitext2", seq_len=2048, data_dir="../shared/data")
results = evaluate_model(model, tokenizer, "wikitext2,gsm8k,lm-eval:zeroshot", limit=100)
```
"""

from __future__ import annotations

from .data import EvaluationError, resolve_data_dir
from .fewshot import FEWSHOT_TASKS, build_prompt, evaluate_fewshot, extract_final_number, numbers_match
from .harness import WANDA_ZERO_SHOT_TASKS, evaluate_harness
from .perplexity import PERPLEXITY_SOURCES, perplexity, perplexity_details
from .suite import evaluate_model, format_results_table, headline_metrics, parse_tasks

__all__ = [
    "EvaluationError",
    "FEWSHOT_TASKS",
    "PERPLEXITY_SOURCES",
    "WANDA_ZERO_SHOT_TASKS",
    "build_prompt",
    "evaluate_fewshot",
    "evaluate_harness",
    "evaluate_model",
    "extract_final_number",
    "format_results_table",
    "headline_metrics",
    "numbers_match",
    "parse_tasks",
    "perplexity",
    "perplexity_details",
    "resolve_data_dir",
]
