"""Few-shot generation accuracy, the protocol of the calibration-data study.

"Is C4 Dataset Optimal for Pruning?" (arXiv 2410.07461; code: https://github.com/abx393/llm-pruning-calibration-data,
``lib/eval.py``) scores pruned models by greedy generation after fixed in-context exemplars:
GSM8K, SVAMP and MAWPS after the same three GSM8K exemplars, with the final number compared by value;
ANLI and e-SNLI after nine exemplars, RTE, BoolQ, CommonsenseQA, RACE and WinoGrande after three, with
the generated label compared exactly. Each task is one object in :mod:`hf_calibprune.evaluation.tasks`
and one line in :data:`FEWSHOT_TASKS`.

Differences from the study's code, on purpose: exemplars are stored as fields and rendered with the
same template as the query (the study's strings carry stray tabs, and its BoolQ exemplars say
``Label:`` where the query says ``Answer:``); evaluated rows that equal an exemplar are dropped;
generation is batched with left padding and stops at the task's delimiter.
"""

from __future__ import annotations

import ast
import logging
import math
import operator
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from ..registry import Registry
from .data import EvaluationError, find_data_file, read_records

__all__ = [
    "Example",
    "FewShotTask",
    "FEWSHOT_TASKS",
    "build_prompt",
    "select_examples",
    "extract_final_number",
    "numbers_match",
    "safe_arithmetic",
    "generate_greedy",
    "evaluate_fewshot",
]

logger = logging.getLogger(__name__)

FEWSHOT_TASKS: Registry = Registry(
    "few-shot task",
    {
        "gsm8k": "hf_calibprune.evaluation.tasks.arithmetic:GSM8K",
        "svamp": "hf_calibprune.evaluation.tasks.arithmetic:SVAMP",
        "mawps": "hf_calibprune.evaluation.tasks.arithmetic:MAWPS",
        "anli_r1": "hf_calibprune.evaluation.tasks.nli:ANLI_R1",
        "esnli": "hf_calibprune.evaluation.tasks.nli:ESNLI",
        "rte": "hf_calibprune.evaluation.tasks.nli:RTE",
        "boolq": "hf_calibprune.evaluation.tasks.choice:BOOLQ",
        "commonsense_qa": "hf_calibprune.evaluation.tasks.choice:COMMONSENSE_QA",
        "race": "hf_calibprune.evaluation.tasks.choice:RACE",
        "winogrande": "hf_calibprune.evaluation.tasks.choice:WINOGRANDE",
    },
    error=EvaluationError,
)


@dataclass(frozen=True)
class Example:
    """One task row: the template fields, the gold label text and, where known, a worked rationale.

    Args:
        fields (`Mapping[str, str]`): values for the task's template (``question``, ``premise``, ...).
        label (`str`): the gold answer as the model should write it (``"72"``, ``"neutral"``, ``"B"``).
        rationale (`str`, *optional*): the worked solution, used by chain-of-thought exemplars.
        value (`float`, *optional*): the numeric answer, for tasks compared by value.
    """

    fields: Mapping[str, str]
    label: str
    rationale: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class FewShotTask:
    """A few-shot generation task: where its rows are, how they render, and how an answer is scored.

    Subclasses implement :meth:`parse_row` and :meth:`render`; the rest is shared.

    Args:
        name (`str`): registry name.
        source (`str`): folder of the local data mirror holding the evaluation file.
        files (`tuple[str, ...]`): glob patterns tried in order inside that folder.
        exemplars (`tuple[Example, ...]`): the in-context examples (the study's).
        cot_exemplars (`tuple[Example, ...]`, *optional*): exemplars with rationales, or empty when the
            study has none for this task.
        key_fields (`tuple[str, ...]`): fields that identify a row; rows whose key equals an exemplar's are
            not evaluated.
        stop (`str`): the answer is the generated text before this delimiter.
        max_new_tokens (`int`): generation budget (the study's: 256 for arithmetic, 20 for labels).
        cot_max_new_tokens (`int`): generation budget with chain-of-thought exemplars.
    """

    name: str
    source: str
    files: tuple[str, ...]
    exemplars: tuple[Example, ...]
    cot_exemplars: tuple[Example, ...] = ()
    key_fields: tuple[str, ...] = ()
    stop: str = "\n\n"
    max_new_tokens: int = 20
    cot_max_new_tokens: int = 256
    description: str = field(default="", compare=False)

    # -- to implement -------------------------------------------------------------------------------
    def parse_row(self, row: Mapping[str, Any]) -> Example:
        """Turn one raw row of the local file into an :class:`Example`."""
        raise NotImplementedError

    def render(self, example: Example, answer: str | None) -> str:
        """The example as the model sees it; ``answer=None`` renders the query (ending before the answer)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    @property
    def shots(self) -> int:
        return len(self.exemplars)

    def exemplar_answer(self, example: Example, cot: bool) -> str:
        """Answer text of an exemplar: the label, or the rationale followed by the label."""
        if cot:
            return f"{example.rationale} So the answer is {example.label}."
        return example.label

    def key(self, example: Example) -> tuple[str, ...]:
        fields = self.key_fields or tuple(sorted(example.fields))
        return tuple(_normalize(str(example.fields.get(name, ""))) for name in fields)

    def load_examples(self, data_dir: str | os.PathLike | None = None) -> tuple[list[Example], str]:
        """Read and parse the evaluation rows; returns ``(examples, path)``."""
        path = find_data_file(data_dir, self.source, self.files, what=f"Few-shot task '{self.name}'")
        rows = read_records(path)
        try:
            examples = [self.parse_row(row) for row in rows]
        except (KeyError, TypeError, ValueError) as error:
            raise EvaluationError(
                f"'{path}' does not have the fields task '{self.name}' reads ({error!r}); "
                "use the dataset's original schema (see the data mirror's SOURCES.md)."
            ) from error
        return examples, str(path)

    def answer_text(self, generation: str, cot: bool) -> str:
        """The part of a generation that holds the answer."""
        text = generation.split(self.stop)[0].strip() if self.stop else generation.strip()
        if cot:
            match = list(re.finditer(r"answer is", text, flags=re.IGNORECASE))
            if match:
                text = text[match[-1].end() :]
        return text.strip().strip(".").strip()

    def is_correct(self, generation: str, example: Example, cot: bool) -> bool:
        """Exact match of the generated label (case-insensitive, surrounding spaces and periods ignored)."""
        return self.answer_text(generation, cot).lower() == example.label.strip().lower()


def _normalize(text: str) -> str:
    return " ".join(text.split()).lower()


def select_examples(task: FewShotTask, examples: Sequence[Example], limit: int | None = None) -> list[Example]:
    """Drop rows that equal one of the task's exemplars, then keep the first ``limit`` (file order)."""
    # Both exemplar sets are excluded, so a row is never scored after being shown solved.
    exemplar_keys = {task.key(example) for example in (*task.exemplars, *task.cot_exemplars)}
    kept = [example for example in examples if task.key(example) not in exemplar_keys]
    dropped = len(examples) - len(kept)
    if dropped:
        logger.info("%s: %d evaluated row(s) equal an exemplar and were left out.", task.name, dropped)
    return kept if limit is None else kept[:limit]


def build_prompt(task: FewShotTask, example: Example, cot: bool = False) -> str:
    """The few-shot prompt: the exemplars with their answers, then the query, separated by blank lines."""
    exemplars = task.cot_exemplars if cot else task.exemplars
    if cot and not exemplars:
        raise EvaluationError(
            f"Task '{task.name}' has no chain-of-thought exemplars (the study gives them only for "
            f"{', '.join(name for name in FEWSHOT_TASKS.names() if FEWSHOT_TASKS.get(name).cot_exemplars)}). "
            "Evaluate it without cot."
        )
    shots = [task.render(exemplar, task.exemplar_answer(exemplar, cot)) for exemplar in exemplars]
    return "\n\n".join([*shots, task.render(example, None)])


# -- numbers ----------------------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_final_number(text: str) -> float | None:
    """The last number written in ``text`` as a float (``"$1,000."`` → 1000.0), or `None` when there is none."""
    matches = _NUMBER.findall(text)
    for candidate in reversed(matches):
        cleaned = candidate.replace(",", "")
        try:
            return float(cleaned)
        except ValueError:
            continue
    return None


def numbers_match(prediction: str | float | None, target: str | float | None) -> bool:
    """Whether two numbers are equal by value: ``"1,000"`` equals ``"1000.0"`` and ``1000``."""
    values = []
    for item in (prediction, target):
        if item is None:
            return False
        value = item if isinstance(item, (int, float)) else extract_final_number(str(item))
        if value is None:
            return False
        values.append(float(value))
    return math.isclose(values[0], values[1], rel_tol=1e-6, abs_tol=1e-6)


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def safe_arithmetic(expression: str) -> float:
    """Evaluate an arithmetic expression (numbers, + - * / ** and parentheses) without `eval`."""

    def visit(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](visit(node.operand))
        raise ValueError(f"not an arithmetic expression: {expression!r}")

    return visit(ast.parse(expression.strip(), mode="eval"))


# -- generation -------------------------------------------------------------------------------------


class _StopOnString(StoppingCriteria):
    """Marks a row finished once its generated text contains ``stop``."""

    def __init__(self, tokenizer: Any, prompt_length: int, stop: str) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor([self.stop in text for text in texts], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_greedy(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    stop: str | None = None,
    batch_size: int = 8,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of ``prompts``, batched with left padding (the tokenizer's settings are restored).

    Prompts are sorted by length so a batch holds similar lengths; results come back in input order.
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise EvaluationError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    outputs: list[str] = [""] * len(prompts)
    saved_side, saved_pad = tokenizer.padding_side, tokenizer.pad_token
    was_training = model.training
    device = next(model.parameters()).device
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            indices = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True).to(device)
            prompt_length = encoded["input_ids"].shape[1]
            stopping = StoppingCriteriaList([_StopOnString(tokenizer, prompt_length, stop)]) if stop else None
            generated = model.generate(
                input_ids=encoded["input_ids"],
                attention_mask=encoded["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=stopping,
            )
            texts = tokenizer.batch_decode(generated[:, prompt_length:], skip_special_tokens=True)
            for index, text in zip(indices, texts):
                outputs[index] = text
    finally:
        tokenizer.padding_side = saved_side
        if saved_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return outputs


def evaluate_fewshot(
    model: torch.nn.Module,
    tokenizer: Any,
    task: str | FewShotTask,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    cot: bool = False,
    max_new_tokens: int | None = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Few-shot greedy-generation accuracy of ``model`` on one task of :data:`FEWSHOT_TASKS`.

    Args:
        model (`torch.nn.Module`): a causal LM with ``generate``.
        tokenizer: its tokenizer.
        task (`str` or `FewShotTask`): task name (``"gsm8k"``, ``"anli_r1"``, ...) or object.
        data_dir (`str`, *optional*): local mirror holding ``<source>/<file>`` for the task.
        limit (`int`, *optional*): evaluate the first ``limit`` rows (after exemplar rows are removed).
        batch_size (`int`, *optional*, defaults to 8): prompts per `generate` call.
        cot (`bool`, *optional*, defaults to `False`): use chain-of-thought exemplars.
        max_new_tokens (`int`, *optional*): override the task's generation budget.
        return_predictions (`bool`, *optional*): include each prompt's generation and score.

    Returns:
        `dict`: ``accuracy``, ``correct``, ``n``, ``shots``, ``cot``, ``file``, ``scores`` (1 or 0 per row, in
        order) and, when asked, ``predictions``.
    """
    task_object = FEWSHOT_TASKS.get(task) if isinstance(task, str) else task
    examples, path = task_object.load_examples(data_dir)
    selected = select_examples(task_object, examples, limit)
    if not selected:
        raise EvaluationError(f"Task '{task_object.name}' has no rows to evaluate in '{path}'.")
    prompts = [build_prompt(task_object, example, cot) for example in selected]
    budget = max_new_tokens or (task_object.cot_max_new_tokens if cot else task_object.max_new_tokens)
    generations = generate_greedy(
        model, tokenizer, prompts, budget, stop=task_object.stop, batch_size=batch_size, desc=task_object.name
    )
    scores = [task_object.is_correct(text, example, cot) for text, example in zip(generations, selected)]
    result: dict[str, Any] = {
        "accuracy": sum(scores) / len(scores),
        "correct": int(sum(scores)),
        "n": len(scores),
        "shots": len(task_object.cot_exemplars if cot else task_object.exemplars),
        "cot": cot,
        "file": path,
        "scores": [int(score) for score in scores],
    }
    if return_predictions:
        result["predictions"] = [
            {"label": example.label, "generation": text, "correct": score}
            for example, text, score in zip(selected, generations, scores)
        ]
    return result
