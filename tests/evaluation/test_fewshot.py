"""The study's few-shot protocol: number matching by value, prompts, exemplar exclusion, batched generation."""

from __future__ import annotations

import pytest

from hf_calibprune.evaluation import FEWSHOT_TASKS, EvaluationError, build_prompt, evaluate_fewshot
from hf_calibprune.evaluation.fewshot import (
    extract_final_number,
    generate_greedy,
    numbers_match,
    safe_arithmetic,
    select_examples,
)
from hf_calibprune.evaluation.tasks.arithmetic import GSM8K_EXEMPLARS

from .conftest import SHARED_DATA, write_jsonl


@pytest.mark.parametrize(
    "prediction,target",
    [("1,000", "1000.0"), ("$1,000.", 1000), ("The answer is 18.", "18"), ("-3.50", "-3.5"), ("0.5", ".5")],
)
def test_numbers_match_by_value(prediction, target):
    assert numbers_match(prediction, target)


@pytest.mark.parametrize("prediction,target", [("72", "71"), ("no number here", "3"), (None, "3"), ("10", "100")])
def test_numbers_differ(prediction, target):
    assert not numbers_match(prediction, target)


def test_extract_final_number_takes_the_last():
    assert extract_final_number("She has 3 apples and buys 1,250 more: 1,253") == 1253.0
    assert extract_final_number("nothing") is None


def test_safe_arithmetic():
    assert safe_arithmetic("( 10.0 * 45.0 )") == 450.0
    assert safe_arithmetic("-(3 - 5) / 4") == 0.5
    with pytest.raises(ValueError):
        safe_arithmetic("__import__('os').getcwd()")


def test_arithmetic_scoring_reads_the_answer_before_the_blank_line():
    task = FEWSHOT_TASKS.get("gsm8k")
    example = task.parse_row({"question": "q", "answer": "So 500 * 2 = <<500*2=1000>>1000\n#### 1,000"})
    assert example.value == 1000.0
    assert task.is_correct(" 1000\n\nQuestion: 7 cats", example, cot=False)
    assert task.is_correct(" She pays 500 * 2 = 1,000 #### 1,000.0\n\nQuestion: 5", example, cot=True)
    assert not task.is_correct(" 999\n\nQuestion: 1000", example, cot=False)


def test_label_scoring_is_exact_on_the_first_segment():
    anli = FEWSHOT_TASKS.get("anli_r1")
    example = anli.parse_row({"premise": "p", "hypothesis": "h", "label": 1, "reason": "r"})
    assert example.label == "neutral"
    assert anli.is_correct(" neutral\n\nPremise: x", example, cot=False)
    assert anli.is_correct(" It is unclear. So the answer is neutral.\n\nPremise:", example, cot=True)
    assert not anli.is_correct(" neutral or entailment", example, cot=False)
    boolq = FEWSHOT_TASKS.get("boolq")
    row = boolq.parse_row({"passage": "p", "question": "q", "label": 1})
    assert boolq.is_correct(" True\nQuestion: more", row, cot=False)
    assert not boolq.is_correct(" false", row, cot=False)


def test_prompt_has_the_exemplars_then_the_query():
    task = FEWSHOT_TASKS.get("gsm8k")
    query = task.parse_row({"question": "Tom has 2 apples. How many?", "answer": "#### 2"})
    prompt = build_prompt(task, query)
    assert prompt.endswith("Question: Tom has 2 apples. How many?\nAnswer:")
    assert prompt.count("Question:") == 4
    for exemplar in GSM8K_EXEMPLARS:
        assert prompt.count(exemplar.fields["question"]) == 1
    assert "\nAnswer: 72\n\n" in prompt and "#### 72" not in prompt
    assert "#### 72" in build_prompt(task, query, cot=True)


def test_exemplars_are_kept_out_of_the_evaluated_rows(tmp_path):
    rows = [{"question": GSM8K_EXEMPLARS[1].fields["question"], "answer": "x\n#### 10"}]
    rows += [{"question": f"Tom has {i} apples. How many?", "answer": f"#### {i}"} for i in range(5)]
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", rows)
    task = FEWSHOT_TASKS.get("gsm8k")
    examples, _ = task.load_examples(tmp_path)
    selected = select_examples(task, examples)
    assert len(selected) == 5
    exemplar_questions = {e.fields["question"] for e in GSM8K_EXEMPLARS}
    assert not exemplar_questions & {e.fields["question"] for e in selected}
    assert [e.value for e in select_examples(task, examples, limit=2)] == [0.0, 1.0]


def test_missing_data_names_the_file(model, tokenizer, tmp_path):
    with pytest.raises(EvaluationError, match="gsm8k"):
        evaluate_fewshot(model, tokenizer, "gsm8k", data_dir=tmp_path)
    with pytest.raises(EvaluationError, match="Unknown few-shot task"):
        evaluate_fewshot(model, tokenizer, "gsm9k", data_dir=tmp_path)
    with pytest.raises(EvaluationError, match="no chain-of-thought exemplars"):
        build_prompt(FEWSHOT_TASKS.get("rte"), FEWSHOT_TASKS.get("rte").exemplars[0], cot=True)


def test_batched_left_padded_generation_equals_one_by_one(model, tokenizer):
    prompts = ["Question: Natalia sold clips", "Premise: A person", "The quick brown fox jumps over the lazy dog and"]
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert (tokenizer.padding_side, tokenizer.pad_token) == (side, pad)


def test_evaluate_fewshot_end_to_end(model, tokenizer, small_data_dir):
    result = evaluate_fewshot(
        model, tokenizer, "gsm8k", data_dir=small_data_dir, limit=3, max_new_tokens=4, return_predictions=True
    )
    assert result["n"] == 3 and result["shots"] == 3
    assert result["correct"] == sum(p["correct"] for p in result["predictions"])
    assert result["accuracy"] == result["correct"] / 3


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared data mirror not present")
@pytest.mark.parametrize("name", FEWSHOT_TASKS.names())
def test_every_task_reads_the_shared_mirror(name):
    task = FEWSHOT_TASKS.get(name)
    examples, path = task.load_examples(SHARED_DATA)
    selected = select_examples(task, examples)
    assert len(selected) > 10, path
    exemplar_keys = {task.key(e) for e in (*task.exemplars, *task.cot_exemplars)}
    assert not exemplar_keys & {task.key(e) for e in selected}
    prompt = build_prompt(task, selected[0])
    assert prompt.endswith(task.render(selected[0], None))
    for exemplar in task.exemplars:
        assert task.render(exemplar, task.exemplar_answer(exemplar, False)) in prompt
    if task.cot_exemplars:
        assert "answer is" in build_prompt(task, selected[0], cot=True).lower() or "####" in build_prompt(task, selected[0], cot=True)
    assert all(e.label for e in selected[:50])
