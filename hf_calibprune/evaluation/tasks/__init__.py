"""Few-shot task definitions, one module per family; registered by name in
:data:`hf_calibprune.evaluation.fewshot.FEWSHOT_TASKS`."""
