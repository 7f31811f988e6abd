"""Arithmetic word problems: GSM8K, SVAMP and MAWPS, all after the same three GSM8K exemplars.

Template (the study's ``gsm8k_question_answer_template`` / ``gsm8k_cot_template`` in ``lib/eval.py``):
``Question: {question}\\nAnswer: {label}``, and with chain of thought
``Question: {question}\\nAnswer: {rationale} #### {label}``. The answer is the generated text before the
first blank line, after the last ``####`` (or "answer is") if any; its final number is compared by value
with the gold number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..fewshot import Example, FewShotTask, extract_final_number, numbers_match, safe_arithmetic

__all__ = ["ArithmeticTask", "GSM8K_EXEMPLARS", "GSM8K", "SVAMP", "MAWPS"]


def _gsm8k_example(question: str, answer: str) -> Example:
    rationale, _, label = answer.partition("####")
    label = label.strip()
    return Example(
        fields={"question": question},
        label=label,
        rationale=" ".join(line.strip() for line in rationale.strip().splitlines()),
        value=extract_final_number(label),
    )


# The first three rows of the GSM8K train split, as the study uses them.
GSM8K_EXEMPLARS = (
    _gsm8k_example(
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    ),
    _gsm8k_example(
        "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
        "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    ),
    _gsm8k_example(
        "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
        "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
        "How much more money does Betty need to buy the wallet?",
        "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
        "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
        "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5",
    ),
)


@dataclass(frozen=True)
class ArithmeticTask(FewShotTask):
    """A word-problem task scored by the value of the final generated number."""

    stop: str = "\n\n"
    max_new_tokens: int = 256
    key_fields: tuple[str, ...] = ("question",)

    def render(self, example: Example, answer: str | None) -> str:
        text = f"Question: {example.fields['question']}\nAnswer:"
        return text if answer is None else f"{text} {answer}"

    def exemplar_answer(self, example: Example, cot: bool) -> str:
        return f"{example.rationale} #### {example.label}" if cot else example.label

    def answer_text(self, generation: str, cot: bool) -> str:
        text = generation.split(self.stop)[0]
        if "####" in text:
            return text.rsplit("####", 1)[1].strip()
        lowered = text.lower()
        if "answer is" in lowered:
            return text[lowered.rindex("answer is") + len("answer is") :].strip()
        return text.strip()

    def is_correct(self, generation: str, example: Example, cot: bool) -> bool:
        return numbers_match(extract_final_number(self.answer_text(generation, cot)), example.value)


@dataclass(frozen=True)
class _GSM8KTask(ArithmeticTask):
    def parse_row(self, row: Mapping[str, Any]) -> Example:
        return _gsm8k_example(row["question"], row["answer"])


@dataclass(frozen=True)
class _SVAMPTask(ArithmeticTask):
    def parse_row(self, row: Mapping[str, Any]) -> Example:
        if "input" in row:  # distilling-step-by-step split: input = "Body\nQuestion", label = equation
            question = " ".join(part.strip() for part in row["input"].split("\n"))
            value = safe_arithmetic(row["label"])
        else:  # SVAMP.json / ChilleD/SVAMP schema
            question = f"{row['Body'].strip()} {row['Question'].strip()}"
            value = float(row["Answer"])
        return Example(fields={"question": question}, label=f"{value:g}", value=value)


@dataclass(frozen=True)
class _MAWPSTask(ArithmeticTask):
    def parse_row(self, row: Mapping[str, Any]) -> Example:
        if "original_text" in row:  # MWPToolkit schema
            question, value = row["original_text"].strip(), float(row["ans"])
        else:  # MU-NLPC/Calc-mawps schema
            question = row["question"].strip()
            value = float(row["result_float"]) if "result_float" in row else float(extract_final_number(str(row["result"])))
        return Example(fields={"question": question}, label=f"{value:g}", value=value)


GSM8K = _GSM8KTask(
    name="gsm8k",
    source="gsm8k",
    files=("test.jsonl", "test.shared.jsonl", "test*.jsonl"),
    exemplars=GSM8K_EXEMPLARS,
    cot_exemplars=GSM8K_EXEMPLARS,
    description="GSM8K test, 3-shot, final number compared by value",
)
SVAMP = _SVAMPTask(
    name="svamp",
    source="svamp",
    files=("dsbs_svamp_test.jsonl", "test*.json*"),
    exemplars=GSM8K_EXEMPLARS,
    cot_exemplars=GSM8K_EXEMPLARS,
    description="SVAMP 200-problem test split (distilling step-by-step), GSM8K 3-shot",
)
MAWPS = _MAWPSTask(
    name="mawps",
    source="mawps",
    files=("testset.json", "test*.json*"),
    exemplars=GSM8K_EXEMPLARS,
    cot_exemplars=GSM8K_EXEMPLARS,
    description="MAWPS test split (MWPToolkit), GSM8K 3-shot",
)
