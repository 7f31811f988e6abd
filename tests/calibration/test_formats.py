"""Format semantics: the study's templates, BOS per example, shots and padding, windows, mixtures, seeds."""

from __future__ import annotations

import json
import random

import torch

from hf_calibprune.calibration import CalibrationConfig, build_calibration_samples, render_samples, split_counts


def _gsm8k_rows(fixtures_dir):
    return [json.loads(line) for line in (fixtures_dir / "gsm8k" / "train.jsonl").read_text().splitlines()]


def test_gsm8k_templates_follow_the_study(fixtures_dir, no_hub):
    expected = {"zero": set(), "single": set(), "cot": set()}
    for row in _gsm8k_rows(fixtures_dir):
        rationale, label = (part.strip() for part in row["answer"].split("####"))
        expected["zero"].add(f"Question: {row['question']}\nAnswer: ")
        expected["single"].add(f"Question: {row['question']}\nAnswer: {label}")
        expected["cot"].add(f"Question: {row['question']}\nAnswer: {rationale}. So the answer is {label}.")
    for fmt, texts in expected.items():
        rendered = render_samples("gsm8k", fmt, 6, data_dir=str(fixtures_dir), seed=3)
        assert set(rendered) <= texts and rendered


def test_icl_examples_each_start_with_bos(tokenizer, fixtures_dir, no_hub):
    bos = tokenizer.bos_token_id
    config = CalibrationConfig(sources="gsm8k", format="icl", data_dir=str(fixtures_dir))
    lengths = [len(tokenizer(t)["input_ids"]) for t in render_samples("gsm8k", "icl", 20, data_dir=str(fixtures_dir))]
    seq_len = max(lengths) + 1  # every window of this length crosses an example start
    samples = build_calibration_samples(config, tokenizer, num_samples=3, seq_len=seq_len, seed=0)
    assert samples.fingerprint["sources"][0]["sampling"] == "concat"
    assert int(samples.attention_mask.sum()) == 3 * seq_len  # concat mode never pads
    assert all(int((row == bos).sum()) >= 1 for row in samples.input_ids)


def test_shots_k_puts_k_examples_and_right_pads(tokenizer, fixtures_dir, no_hub):
    pad, bos = tokenizer.pad_token_id, tokenizer.bos_token_id
    example_lengths = set()
    for text in render_samples("gsm8k", "cot", 20, data_dir=str(fixtures_dir), seed=1):
        example_lengths.add(len(tokenizer(text)["input_ids"]))
    seq_len = 3 * max(example_lengths) + 10  # room for 3 examples: padding must appear
    config = CalibrationConfig(sources="gsm8k", format="cot", shots=3, data_dir=str(fixtures_dir))
    samples = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=seq_len, seed=0)
    for ids, mask in zip(samples.input_ids, samples.attention_mask):
        real = int(mask.sum())
        assert real < seq_len
        assert int((ids[:real] == bos).sum()) == 3 and int(ids[0]) == bos
        assert bool((ids[real:] == pad).all()) and bool((mask[real:] == 0).all())
    assert samples.fingerprint["padding_tokens"] == int((samples.attention_mask == 0).sum()) > 0


def test_zero_shot_prompts_leave_out_the_answer(tokenizer, fixtures_dir, no_hub):
    config = CalibrationConfig(sources="gsm8k", format="zero", data_dir=str(fixtures_dir))
    samples = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=200, seed=0)
    for ids, mask in zip(samples.input_ids, samples.attention_mask):
        text = tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
        assert text.startswith("Question: ") and text.endswith("Answer: ")
        assert "####" not in text and "So the answer" not in text


def test_wanda_windows_come_from_one_long_document(tokenizer):
    docs = [" ".join(f"doc{d} word{i}" for i in range(60)) for d in range(6)]
    samples = build_calibration_samples(docs, tokenizer, num_samples=5, seq_len=24, seed=0)
    assert samples.fingerprint["sources"][0]["sampling"] == "wanda"
    tokenized = [tokenizer(d)["input_ids"] for d in docs]
    for row in samples.input_ids.tolist():
        assert any(
            row == doc[i : i + 24] for doc in tokenized for i in range(len(doc) - 24)
        ), "a Wanda sample must be a contiguous window of a single document"


def test_short_documents_are_concatenated(tokenizer):
    docs = [f"short document number {i} about topic {i % 3}." for i in range(40)]
    samples = build_calibration_samples(docs, tokenizer, num_samples=3, seq_len=32, seed=0)
    assert samples.fingerprint["sources"][0]["sampling"] == "concat"
    assert all(int((row == tokenizer.bos_token_id).sum()) >= 1 for row in samples.input_ids)


def test_wikitext2_windows_of_the_joined_stream(tokenizer, fixtures_dir, no_hub):
    rows = [json.loads(line)["text"] for line in (fixtures_dir / "wikitext2" / "train.jsonl").read_text().splitlines()]
    stream = tokenizer(" ".join(rows))["input_ids"]
    config = CalibrationConfig(sources="wikitext2", data_dir=str(fixtures_dir))
    samples = build_calibration_samples(config, tokenizer, num_samples=3, seq_len=20, seed=5)
    rng = random.Random(5)  # the reference code's draws, replayed
    for row in samples.input_ids.tolist():
        start = rng.randint(0, len(stream) - 20 - 1)
        assert row == stream[start : start + 20]


def test_split_counts_largest_remainder():
    assert split_counts([0.5, 0.5], 5) == [3, 2]
    assert split_counts([1 / 3, 1 / 3, 1 / 3], 10) == [4, 3, 3]
    assert split_counts([0.7, 0.2, 0.1], 7) == [5, 1, 1]
    for weights, total in (([0.25, 0.25, 0.5], 9), ([0.9, 0.1], 3), ([0.2] * 5, 128)):
        assert sum(split_counts(weights, total)) == total


def test_mixture_splits_by_weight_and_formats_apply_per_source(tokenizer, fixtures_dir, no_hub):
    config = CalibrationConfig(
        sources={"gsm8k": 0.5, "c4": 0.25, "esnli:cot": 0.25}, format="icl", shots=2, data_dir=str(fixtures_dir)
    )
    samples = build_calibration_samples(config, tokenizer, num_samples=8, seq_len=32, seed=0)
    entries = {entry["name"]: entry for entry in samples.fingerprint["sources"]}
    assert [entries[n]["num_samples"] for n in ("gsm8k", "c4", "esnli")] == [4, 2, 2]
    assert entries["gsm8k"]["format"] == "icl" and entries["gsm8k"]["shots"] == 2
    assert entries["c4"]["format"] == "plain" and entries["c4"]["requested_format"] == "icl"
    assert entries["esnli"]["format"] == "cot"
    assert samples.input_ids.shape == (8, 32)
    json.dumps(samples.fingerprint)


def test_list_of_specs_is_an_equal_mixture(tokenizer, fixtures_dir, monkeypatch, no_hub):
    monkeypatch.setenv("HF_CALIBPRUNE_DATA_DIR", str(fixtures_dir))
    samples = build_calibration_samples(["gsm8k:icl", "c4"], tokenizer, num_samples=3, seq_len=16, seed=0)
    assert [(e["name"], e["format"], e["num_samples"]) for e in samples.fingerprint["sources"]] == [
        ("gsm8k", "icl", 2),
        ("c4", "plain", 1),
    ]


def test_seeded_without_touching_global_random_state(tokenizer, fixtures_dir, no_hub):
    python_state, torch_state = random.getstate(), torch.get_rng_state()
    config = CalibrationConfig(sources="gsm8k:icl", data_dir=str(fixtures_dir))
    first = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=32, seed=7)
    random.seed(123)
    torch.manual_seed(123)
    second = build_calibration_samples(config, tokenizer, num_samples=4, seq_len=32, seed=7)
    assert torch.equal(first.input_ids, second.input_ids)
    random.setstate(python_state)
    torch.set_rng_state(torch_state)
    before = (random.getstate(), torch.get_rng_state())
    build_calibration_samples(config, tokenizer, num_samples=4, seq_len=32, seed=8)
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])


def test_config_values_win_over_arguments(tokenizer, fixtures_dir, no_hub):
    config = CalibrationConfig(sources="c4", num_samples=2, seq_len=8, seed=3, data_dir=str(fixtures_dir))
    samples = build_calibration_samples(config, tokenizer, num_samples=99, seq_len=99, seed=0)
    assert samples.input_ids.shape == (2, 8) and samples.fingerprint["seed"] == 3


def test_dataset_and_template_inputs(tokenizer, tmp_path):
    import datasets

    rows = {"question": [f"what is {i} plus {i}?" for i in range(30)], "answer": [str(2 * i) for i in range(30)]}
    dataset = datasets.Dataset.from_dict({"text": [f"{q} {a}" for q, a in zip(rows["question"], rows["answer"])]})
    from_dataset = build_calibration_samples(dataset, tokenizer, num_samples=2, seq_len=16, seed=0)
    assert from_dataset.input_ids.shape == (2, 16)

    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(*rows.values())))
    config = CalibrationConfig(sources=str(path), template="Q: {question}\nA: {answer}", format="single")
    samples = build_calibration_samples(config, tokenizer, num_samples=3, seq_len=40, seed=0)
    for ids, mask in zip(samples.input_ids, samples.attention_mask):
        text = tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
        assert text.startswith("Q: what is ") and "\nA: " in text

    iterable = dataset.to_iterable_dataset()
    from_iterable = build_calibration_samples(iterable, tokenizer, num_samples=2, seq_len=16, seed=0)
    assert torch.equal(from_iterable.input_ids, from_dataset.input_ids)


def test_local_text_file_and_directory(tokenizer, tmp_path):
    text = " ".join(f"sentence {i} of a plain text file." for i in range(200))
    (tmp_path / "a.txt").write_text(text)
    by_file = build_calibration_samples(str(tmp_path / "a.txt"), tokenizer, num_samples=4, seq_len=32, seed=0)
    by_dir = build_calibration_samples(str(tmp_path), tokenizer, num_samples=4, seq_len=32, seed=0)
    assert torch.equal(by_file.input_ids, by_dir.input_ids)
    assert by_file.fingerprint["sources"][0]["files"] == [str((tmp_path / "a.txt").resolve())]
