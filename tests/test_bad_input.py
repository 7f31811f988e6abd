"""Every kind of bad input is answered before pruning starts, with a message that says what and how to fix it,
and leaves no partial file behind.

* ``CLI_CASES``: the ``prune`` command on real model directories, each with one thing wrong. The error type and
  message are asserted, and neither ``--output`` nor ``--resume-dir`` (nor a temporary sibling) may appear.
* API cases for what only exists in memory (an encoder-only model object, damaged JSON, compact checkpoints).
* A hypothesis property over every ``PruningConfig`` field: any value gives a valid config or a
  :class:`ConfigError` naming the field, never another exception.

Each test records the input and the answer with ``record_property("reliability", ...)`` for
``tests/reliability_report.py``, which writes docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SPECIAL_TOKENS, TEXT, make_tokenizer, tiny_model
from hf_calibprune import CalibratedPruner, PruningConfig, PruningReport
from hf_calibprune.cli import build_parser
from hf_calibprune.errors import CalibrationError, CheckpointError, ConfigError, ModelStructureError

REPO = Path(__file__).resolve().parents[1]


def sparse_id_tokenizer():
    """99 tokens like :func:`make_tokenizer`, but the printable characters have ids 60-154."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: 60 + i for i, char in enumerate(string.printable[:95])})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=256)
    return BertForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Model directories, each with one thing wrong, and calibration files."""
    root = tmp_path_factory.mktemp("bad-input")
    tokenizer = make_tokenizer()
    saved = {
        "llama": (tiny_model("llama"), tokenizer),
        "no-blocks": (tiny_model("llama", num_hidden_layers=0), tokenizer),
        "bert": (tiny_bert(), tokenizer),
        "small-vocab": (tiny_model("llama", vocab_size=64), tokenizer),
        "sparse-ids": (tiny_model("llama"), sparse_id_tokenizer()),
        "no-tokenizer": (tiny_model("llama"), None),
    }
    for name, (model, tok) in saved.items():
        model.save_pretrained(root / name)
        if tok is not None:
            tok.save_pretrained(root / name)
    (root / "no-config").mkdir()
    (root / "no-config" / "model.safetensors").write_bytes(b"")
    with (root / "calib.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"text": f"Sample {i}. " + TEXT[i * 7:]}) + "\n")
    with (root / "content.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(json.dumps({"content": TEXT}) + "\n")
    (root / "short.txt").write_text("Too short.\n")
    (root / "empty.jsonl").write_text("")
    (root / "truncated.json").write_text(PruningConfig(method="magnitude").to_json_string()[:57])
    (root / "typo.json").write_text(json.dumps({"method": "wanda", "sparsty": 0.5}))
    (root / "broken.yaml").write_text("method: wanda\nsparsity: [0.5\n")
    (root / "a-file").write_text("not a directory\n")
    return root


def _not_writable(tmp_path: Path) -> Path | None:
    """A directory this process cannot write into (root ignores permission bits, so also try read-only mounts)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not os.access(locked, os.W_OK):
        return locked
    locked.chmod(0o700)
    for candidate in ("/proc/sys", "/sys"):
        if Path(candidate).is_dir() and not os.access(candidate, os.W_OK):
            return Path(candidate)
    return None


# id, what is wrong, extra/replaced CLI arguments, error type, message pattern
CLI_CASES = [
    ("sparsity-above-1", "sparsity outside [0, 1)", ["--sparsity", "1.5"], ConfigError,
     r"`sparsity=1.5` is outside \[0, 1\); pass a fraction such as 0.5"),
    ("sparsity-negative", "negative sparsity", ["--sparsity", "-0.2"], ConfigError, r"`sparsity=-0.2` is outside"),
    ("sparsity-vs-pattern", "sparsity contradicting an N:M pattern", ["--pattern", "2:4", "--sparsity", "0.3"],
     ConfigError, r"`sparsity=0.3` contradicts `pattern='2:4'`, which prunes exactly 0.5"),
    ("pattern-n-above-m", "N:M pattern with N >= M", ["--pattern", "5:4"], ConfigError, r"`pattern='5:4'`"),
    ("pattern-garbage", "unparsable pattern", ["--pattern", "two-four"], ConfigError, r"`pattern='two-four'` is not understood"),
    ("owl-with-n-m", "OWL allocation with an N:M pattern", ["--allocation", "owl", "--pattern", "2:4"], ConfigError,
     r"`allocation='owl'` varies sparsity per block"),
    ("owl-lambda-too-large", "OWL lambda pushing a block past [0, 1)", ["--allocation", "owl", "--owl-lambda", "0.7"],
     ConfigError, r"`owl_lambda=0.7` must keep every block's sparsity"),
    ("unknown-method", "misspelt method", ["--method", "sparsgpt"], ConfigError, r"Did you mean 'sparsegpt'\?"),
    ("unknown-method-option", "misspelt method option", ["--method", "sparsegpt", "--method-option", "blocksize=64"],
     ConfigError, r"Did you mean 'block_size'\?"),
    ("method-option-form", "method option without =", ["--method-option", "blocksize"], ConfigError,
     r"must look like KEY=VALUE"),
    ("unknown-source", "misspelt calibration source", ["--calibration", "gsm8kk"], ConfigError,
     r"`calibration='gsm8kk'` is neither a file nor a known source. Did you mean 'gsm8k'\?"),
    ("unknown-format", "misspelt calibration format", ["--calibration", "gsm8k:icll"], ConfigError,
     r"Unknown calibration format 'icll' in 'gsm8k:icll'. Did you mean 'icl'\?"),
    ("zero-samples", "num_samples = 0", ["--num-samples", "0"], ConfigError, r"`num_samples=0` must be a whole number"),
    ("zero-batch", "batch_size = 0", ["--batch-size", "0"], ConfigError, r"`batch_size=0` must be a whole number"),
    ("bad-device", "activation device that is not a device", ["--activation-device", "gpu0"], ConfigError,
     r"`activation_device='gpu0'` is not a torch device"),
    ("source-without-text-field", "calibration file without a `text` field", ["--calibration", "{root}/content.jsonl"],
     CalibrationError, r"has no column 'text'. Columns: content. Pass text_field"),
    ("calibration-file-missing", "calibration file that does not exist", ["--calibration", "{root}/missing.jsonl"],
     CalibrationError, r"does not exist"),
    ("calibration-file-empty", "empty calibration file", ["--calibration", "{root}/empty.jsonl"], CalibrationError,
     r"has no rows"),
    ("too-little-text", "less text than num_samples x seq_len", ["--calibration", "{root}/short.txt",
     "--num-samples", "8", "--seq-len", "128"], CalibrationError, r"fewer than num_samples x seq_len = 8 x 128"),
    ("seq-len-beyond-positions", "seq_len beyond the model's positions", ["--seq-len", "512"], ConfigError,
     r"`seq_len=512` is longer than the model's 256 positions; pass seq_len=256 or less"),
    ("no-decoder-blocks", "a model with no decoder blocks", ["--model", "{root}/no-blocks"], ModelStructureError,
     r"found no decoder blocks"),
    ("encoder-only", "an encoder-only model (BERT)", ["--model", "{root}/bert"], ModelStructureError,
     r"is not a decoder-only causal language model"),
    ("tokenizer-larger-than-vocab", "a tokenizer with more tokens than the model's vocabulary",
     ["--model", "{root}/small-vocab"], ConfigError, r"the tokenizer has 99 tokens but the model's vocabulary has 64"),
    ("tokenizer-ids-out-of-range", "a tokenizer producing ids past the model's vocabulary",
     ["--model", "{root}/sparse-ids"], ConfigError, r"calibration tokens hold id 1\d\d, outside the model's vocabulary of 128"),
    ("no-tokenizer", "a model directory without a tokenizer, for a method that needs calibration text",
     ["--model", "{root}/no-tokenizer"], CalibrationError, r"needs a tokenizer"),
    ("model-missing", "a model path that does not exist", ["--model", "{root}/nowhere/model"], CheckpointError,
     r"does not exist; pass a model directory or a Hub id"),
    ("model-without-config", "a model directory without config.json", ["--model", "{root}/no-config"],
     CheckpointError, r"holds no config.json"),
    ("bad-dtype", "an unknown dtype", ["--dtype", "float17"], ModelStructureError, r"`dtype='float17'` is not a torch dtype"),
    ("output-exists", "an output directory that exists and is not empty", ["--output", "{out}"], CheckpointError,
     r"exists and is not empty. Pass overwrite=True \(--overwrite\)"),
    ("output-is-file", "an output path that is a file", ["--output", "{root}/a-file"], CheckpointError,
     r"is a file, not a directory"),
    ("output-not-writable", "an output inside a directory that cannot be written", ["--output", "{locked}/out"],
     CheckpointError, r"Cannot write into .* \(permission denied\)"),
    ("config-truncated", "a truncated --config JSON", ["--config", "{root}/truncated.json"], CheckpointError,
     r"pruning config at .*truncated.json is corrupted or truncated"),
    ("config-unknown-key", "a --config JSON with a misspelt key", ["--config", "{root}/typo.json"], ConfigError,
     r"Unknown PruningConfig key 'sparsty'. Did you mean 'sparsity'\?"),
    ("config-bad-yaml", "a --config YAML that does not parse", ["--config", "{root}/broken.yaml"], ConfigError,
     r"is not valid YAML"),
    ("resume-dir-is-file", "a --resume-dir that is a file", ["--resume-dir", "{root}/a-file"], CheckpointError,
     r"the resume directory .* is a file"),
]


def _argv(root: Path, out: Path, resume: Path, locked: Path | None, changes: list[str]) -> list[str]:
    base = {"--model": str(root / "llama"), "--method": "wanda", "--calibration": str(root / "calib.jsonl"),
            "--num-samples": "2", "--seq-len": "16", "--output": str(out), "--resume-dir": str(resume)}
    flags = []
    changes = [c.format(root=root, out=out, locked=locked) for c in changes]
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in base:
            base[flag] = value
        else:
            flags += [flag, value]
    return ["prune", *[x for pair in base.items() for x in pair], *flags, "--no-progress"]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_answers_bad_input_before_pruning_and_writes_nothing(workspace, tmp_path, record_property, case):
    name, what, changes, error, pattern = case
    out, resume = tmp_path / "out", tmp_path / "resume"
    locked = _not_writable(tmp_path) if name == "output-not-writable" else None
    if name == "output-not-writable" and locked is None:
        pytest.skip("no directory here refuses writes to this user")
    if name == "output-exists":
        out.mkdir()
        (out / "keep.txt").write_text("previous result")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = build_parser().parse_args(_argv(workspace, out, resume, locked, changes))
    started = time.perf_counter()
    with pytest.raises(error, match=pattern) as caught:
        args.func(args)
    record_property("reliability", {"kind": "bad-input", "case": f"CLI: {what}", "expect": error.__name__,
                                    "observed": f"{type(caught.value).__name__}: {caught.value}",
                                    "seconds": round(time.perf_counter() - started, 2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "files were created"
    assert not resume.exists()
    if name == "output-exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "previous result"
    else:
        assert not out.exists()
    assert not [p for p in _leftovers(tmp_path) if p.startswith(".out")]


def test_cli_rejects_sparsity_in_a_subprocess_at_once_and_creates_no_output(workspace, tmp_path, record_property):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_calibprune", "prune", "--model", str(workspace / "llama"), "--method", "wanda",
               "--sparsity", "1.5", "--calibration", str(workspace / "calib.jsonl"), "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    record_property("reliability", {"kind": "bad-input", "case": "`python -m hf_calibprune prune --sparsity 1.5` "
                                    "(subprocess)", "expect": "exit code != 0, message naming sparsity, no output",
                                    "observed": f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1]}"})
    assert result.returncode == 2
    assert "`sparsity=1.5` is outside [0, 1)" in result.stderr
    assert "Loading weights" not in result.stderr and not result.stdout, "the model was loaded before the config was checked"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_config_is_checked_before_the_model_is_looked_up(tmp_path):
    """With both a bad config and a missing model, the config error comes first: nothing was loaded."""
    args = build_parser().parse_args(["prune", "--model", str(tmp_path / "missing"), "--sparsity", "1.5"])
    with pytest.raises(ConfigError, match="sparsity"):
        args.func(args)


# --------------------------------------------------------------------------------------------------
# In memory: the library API
# --------------------------------------------------------------------------------------------------
def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


API_CASES = [
    ("encoder-only-object", "a BertForMaskedLM object", tiny_bert, make_tokenizer, dict(), ModelStructureError,
     r"'bert' \(BertForMaskedLM\) is not a decoder-only causal language model"),
    ("tokenizer-larger-than-vocab", "a tokenizer with more tokens than the model's vocabulary",
     lambda: tiny_model("llama", vocab_size=64), make_tokenizer, dict(), ConfigError,
     r"the tokenizer has 99 tokens but the model's vocabulary has 64"),
    ("tokenizer-ids-out-of-range", "a tokenizer producing ids past the vocabulary", tiny_model, sparse_id_tokenizer,
     dict(), ConfigError, r"calibration tokens hold id 1\d\d, outside the model's vocabulary of 128"),
    ("seq-len-beyond-positions", "seq_len beyond the model's positions", tiny_model, make_tokenizer,
     dict(seq_len=300), ConfigError, r"`seq_len=300` is longer than the model's 256 positions"),
    ("too-little-text", "three words of calibration text", tiny_model, make_tokenizer,
     dict(calibration=["Three words only."], num_samples=4, seq_len=64), CalibrationError, r"fewer than num_samples x seq_len"),
    ("dataset-without-text", "a datasets.Dataset without a text column", tiny_model, make_tokenizer,
     dict(calibration="dataset:question"), CalibrationError, r"no column 'text'"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_answers_bad_input_before_touching_the_model(tmp_path, record_property, case):
    name, what, make_model, make_tok, overrides, error, pattern = case
    if overrides.get("calibration") == "dataset:question":
        from datasets import Dataset

        overrides = {**overrides, "calibration": Dataset.from_dict({"question": [TEXT] * 8})}
    config = PruningConfig(**{**dict(method="sparsegpt", calibration=[TEXT], num_samples=2, seq_len=16), **overrides})
    model = make_model()
    before = _weights(model)
    with pytest.raises(error, match=pattern) as caught:
        CalibratedPruner(config, tokenizer=make_tok(), progress=False, checkpoint_dir=tmp_path / "resume").prune(model)
    record_property("reliability", {"kind": "bad-input", "case": f"API: {what}", "expect": error.__name__,
                                    "observed": f"{type(caught.value).__name__}: {caught.value}"})
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the model was modified"
    assert not (tmp_path / "resume").exists()


def test_a_pruner_needs_a_pruning_config(record_property):
    with pytest.raises(ConfigError, match="CalibratedPruner takes a PruningConfig, not dict") as caught:
        CalibratedPruner({"method": "wanda"})
    record_property("reliability", {"kind": "bad-input", "case": "API: a dict instead of a PruningConfig",
                                    "expect": "ConfigError", "observed": f"ConfigError: {caught.value}"})


@pytest.mark.parametrize("what", ["config", "report"])
@pytest.mark.parametrize("damage", ["truncated", "not-json", "wrong-shape"])
def test_corrupted_or_truncated_json_is_a_checkpoint_error(tmp_path, record_property, what, damage):
    if what == "config":
        text = PruningConfig(method="sparsegpt", sparsity=0.4).to_json_string()
        path, load = tmp_path / "pruning_config.json", PruningConfig.from_pretrained
    else:
        net = tiny_model("llama")
        CalibratedPruner(PruningConfig(method="magnitude"), progress=False).prune(net)
        text = json.dumps(net.pruning_report.to_dict())
        path, load = tmp_path / "pruning_report.json", PruningReport.load
    path.write_text({"truncated": text[: len(text) // 2], "not-json": "\x00\x01garbage", "wrong-shape": "[1, 2]"}[damage])
    expected = {"truncated": "corrupted or truncated", "not-json": "corrupted or truncated",
                "wrong-shape": "mapping of PruningConfig fields|does not hold a pruning report"}[damage]
    with pytest.raises(CheckpointError if damage != "wrong-shape" or what == "report" else ConfigError, match=expected) as caught:
        load(path)
    record_property("reliability", {"kind": "bad-input", "case": f"API: {what} JSON {damage}",
                                    "expect": "CheckpointError/ConfigError", "observed": f"{type(caught.value).__name__}: {caught.value}"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_load_pruning_info_of_a_checkpoint_with_a_truncated_report(tmp_path, record_property):
    from hf_calibprune.hub import load_pruning_info, save_sparse

    net = tiny_model("llama")
    CalibratedPruner(PruningConfig(method="magnitude"), progress=False).prune(net)
    target = save_sparse(net, tmp_path / "ckpt")
    report = target / "pruning_report.json"
    report.write_text(report.read_text()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupted|corrupted or truncated") as caught:
        load_pruning_info(target)
    record_property("reliability", {"kind": "bad-input", "case": "API: a saved checkpoint whose pruning_report.json "
                                    "is truncated", "expect": "CheckpointError", "observed": f"CheckpointError: {caught.value}"})


# --------------------------------------------------------------------------------------------------
# Compact checkpoints with a missing or mismatched bitmask
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compact_checkpoint(tmp_path_factory) -> Path:
    from hf_calibprune.hub import save_sparse

    net = tiny_model("llama")
    CalibratedPruner(PruningConfig(method="magnitude", sparsity=0.5), progress=False).prune(net)
    return save_sparse(net, tmp_path_factory.mktemp("compact") / "ckpt", format="compact")


KEY = "model.layers.0.mlp.up_proj.weight"


def _damage(tensors: dict[str, torch.Tensor], damage: str) -> None:
    bitmask = KEY + "_sparse_bitmask"
    if damage == "missing-bitmask":
        del tensors[bitmask]
    elif damage == "short-bitmask":
        tensors[bitmask] = tensors[bitmask][:-3].clone()
    elif damage == "bitmask-count-mismatch":
        flipped = tensors[bitmask].clone()
        flipped[0] = flipped[0] ^ 1  # one more or one fewer kept element than values stored
        tensors[bitmask] = flipped
    elif damage == "missing-values":
        del tensors[KEY + "_sparse_values"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing-bitmask", r"lacks .*model\.layers\.0\.mlp\.up_proj\.weight_sparse_bitmask.*incomplete or corrupted"),
        ("short-bitmask", r"model\.layers\.0\.mlp\.up_proj\.weight.*do not match its shape"),
        ("bitmask-count-mismatch", r"model\.layers\.0\.mlp\.up_proj\.weight.*do not match its shape"),
        ("missing-values", r"lacks .*model\.layers\.0\.mlp\.up_proj\.weight_sparse_values"),
    ],
    ids=["missing-bitmask", "short-bitmask", "bitmask-count-mismatch", "missing-values"],
)
def test_a_damaged_compact_checkpoint_is_refused_when_loading(compact_checkpoint, tmp_path, record_property, damage, message):
    import shutil

    import hf_calibprune.integrations.transformers_plugin  # noqa: F401 - registers the loader with transformers
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    target = tmp_path / "ckpt"
    shutil.copytree(compact_checkpoint, target)
    weights = target / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    assert KEY + "_sparse_bitmask" in tensors, "the fixture must store this weight as a bitmask"
    _damage(tensors, damage)
    save_file(tensors, str(weights), metadata=metadata)
    files = sorted(p.name for p in target.iterdir())
    with pytest.raises(CheckpointError, match=message) as caught:
        AutoModelForCausalLM.from_pretrained(target)
    record_property("reliability", {"kind": "bad-input", "case": f"API: compact checkpoint, {damage}",
                                    "expect": "CheckpointError", "observed": f"CheckpointError: {caught.value}"})
    assert sorted(p.name for p in target.iterdir()) == files


# --------------------------------------------------------------------------------------------------
# Any value of any PruningConfig field
# --------------------------------------------------------------------------------------------------
FIELDS = [f.name for f in dataclasses.fields(PruningConfig)]
_ANNOTATIONS = {f.name: str(f.type) for f in dataclasses.fields(PruningConfig)}

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**9), 10**9), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["wanda", "sparsegpt", "magnitude", "2:4", "4:8", "1:1", "0:4", "owl", "uniform", "one-pass",
                     "cpu", "cuda:0", "self", "c4", "gsm8k:icl", "gsm8k:icll", "calib.jsonl", "dsnot", "0.5", ""]),
)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), st.dictionaries(st.text(max_size=10), _scalars, max_size=3))


# Values that are valid for their field, so that combinations of several fields are explored too.
_VALID = {
    "method": ["wanda", "sparsegpt", "magnitude"], "sparsity": [0.5, 0.0, 0.9], "pattern": ["unstructured", "2:4"],
    "calibration": ["self", "c4", ["Some calibration text."]], "num_samples": [1, 16], "seq_len": [8, 64],
    "seed": [0, 7], "batch_size": [1, 4], "allocation": ["uniform", "owl"], "owl_lambda": [0.05],
    "owl_threshold": [5.0], "schedule": ["sequential", "one-pass"], "method_options": [{}], "ignore": [[], ["down_proj"]],
    "measure_error": [True, False], "activation_device": [None, "cpu"], "refine": [None, "dsnot"],
    "refine_options": [{}], "execution_device": [None, "cpu"],
}
_configs = st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True).flatmap(
    lambda names: st.fixed_dictionaries(
        {name: st.one_of(_values, st.sampled_from(_VALID[name])) if name in _VALID else _values for name in names}
    )
)


def _conforms(value, annotation: str) -> bool:
    """Whether an accepted value has the field's declared type (``Any`` and unknown annotations pass)."""
    options = [part.strip() for part in annotation.split("|")]
    if value is None:
        return "None" in options or "Any" in options
    for option in options:
        base = option.split("[", 1)[0]
        if base == "Any":
            return True
        if base == "str" and isinstance(value, str):
            return True
        if base == "bool" and isinstance(value, bool):
            return True
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if base == "dict" and isinstance(value, dict):
            return True
        if base == "list" and isinstance(value, list) and ("str" not in option or all(isinstance(v, str) for v in value)):
            return True
    return base not in ("str", "bool", "int", "float", "dict", "list", "None")


def test_any_value_of_any_field_gives_a_valid_config_or_a_config_error_naming_the_field(record_property):
    outcomes: Counter[str] = Counter()

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(kwargs=_configs)
    def check(kwargs):
        try:
            config = PruningConfig(**kwargs)
        except ConfigError as error:
            named = [name for name in kwargs if name in str(error)]
            assert named, f"{kwargs!r}: the message does not name a field it was given: {error}"
            outcomes["ConfigError"] += 1
            return
        except Exception as error:  # noqa: BLE001 - the property under test
            outcomes[type(error).__name__] += 1
            raise AssertionError(f"{kwargs!r} raised {type(error).__name__}: {error}") from error
        for name in kwargs:
            assert _conforms(getattr(config, name), _ANNOTATIONS[name]), f"{name}={getattr(config, name)!r} was accepted"
        assert PruningConfig.from_dict(json.loads(config.to_json_string())) == config, f"{kwargs!r} does not round-trip"
        outcomes["valid"] += 1

    check()
    total = sum(outcomes.values())
    record_property("reliability", {"kind": "bad-input", "case": f"hypothesis: {total} random configs, 1-3 of the "
                                    f"{len(FIELDS)} PruningConfig fields set to random values",
                                    "expect": "valid, or ConfigError naming a field",
                                    "observed": ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())),
                                    "count": outcomes["ConfigError"]})
    assert outcomes["ConfigError"] > 50 and outcomes["valid"] > 10
