"""The calibration study's full grid at the seed paper's sizes, for a CUDA machine, within a time budget.

Runs ``hf-calibprune study`` over every calibration source of the data mirror plus ``self``, ``random`` and
``ellipses``, in the plain, ICL and CoT formats where they exist, with 3 seeds, the source × domain matrix
(WikiText-2, C4 and every task source's held-apart text), the lm-evaluation-harness zero-shot tasks, the 8
languages of ``multilingual/``, and Wanda and SparseGPT at 50 %: 128 × 2048 calibration samples and full
evaluation sets (the paper's sizes)::

    python bench/study_grid.py --model meta-llama/Llama-2-7b-hf --device cuda --max-minutes 600 --output study_gpu

``--max-minutes`` trims the grid instead of overrunning it: the dense model and the baseline cell are run
first and timed, then the largest grid of the trimming ladder below whose estimated time fits what is left
is run, and :func:`~hf_calibprune.study.run_study`'s deadline stops before a run that would not finish
(the study caches every run, so a rerun with more minutes resumes). The ladder drops, in order: SparseGPT,
the CoT format, the third seed, languages beyond en/de/zh, the second seed, then sources from the end.

The dense model is evaluated once per distinct evaluation list: a trimmed grid with fewer languages than the
probe evaluates it again (its PUD columns differ).

``--tiny`` runs the same script end to end on the CPU with a tiny random Llama and tiny sizes (a check that
the script works, not a measurement)::

    PYTHONPATH=$PWD python bench/study_grid.py --tiny --max-minutes 10 --output /tmp/study_tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from calibration_study import SOURCE_FOLDERS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
LANGUAGES = ("en", "de", "fr", "es", "pt", "ru", "zh", "ja")
SYNTHETIC = ("self", "random", "ellipses")

logger = logging.getLogger("study_grid")


def tiny_model_dir(folder: Path, data_dir: Path) -> Path:
    """A tiny random Llama and a byte-level BPE tokenizer trained on the mirror's text, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    texts = []
    for path in sorted(data_dir.glob("*/*.jsonl"))[:20] + sorted(data_dir.glob("multilingual/*/pud.jsonl")):
        with open(path, encoding="utf-8") as handle:
            texts.extend(json.loads(line).get("text") or json.dumps(json.loads(line))[:500] for _, line in zip(range(200), handle))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=0, pad_token_id=1, bos_token_id=None,
    )
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def trimming_ladder(settings):
    """Grids from the full one down to the baseline source alone, each smaller than the one before."""
    current = settings
    yield current
    steps = [
        lambda s: dataclasses.replace(s, methods=s.methods[:1]),
        lambda s: dataclasses.replace(s, formats=tuple(f for f in s.formats if f != "cot") or s.formats),
        lambda s: dataclasses.replace(s, seeds=s.seeds[:2]),
        lambda s: dataclasses.replace(s, languages=tuple(lang for lang in s.languages if lang in ("en", "de", "zh"))),
        lambda s: dataclasses.replace(s, seeds=s.seeds[:1]),
    ]
    for step in steps:
        smaller = step(current)
        if smaller != current:
            current = smaller
            yield current
    while len(current.calibration) > 1:
        current = dataclasses.replace(current, calibration=current.calibration[:-1])
        yield current
    if current.languages:
        yield dataclasses.replace(current, languages=())


def estimate_seconds(settings, seconds_per_run: float, seconds_per_language_run: float) -> float:
    from hf_calibprune.study import plan_study

    runs = plan_study(settings).runs[1:]
    grid = sum(1 for run in runs if run.kind == "pruned")
    languages = sum(1 for run in runs if run.kind == "language")
    # self generates its calibration text: count it as two runs.
    generated = sum(1 for run in runs if run.calibration == "self")
    return (grid + generated) * seconds_per_run + languages * seconds_per_language_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Model directory or Hub id (default: SmolLM2-135M-Instruct).")
    parser.add_argument("--device", default=None, help="cuda for a GPU; default: where the model loads (CPU).")
    parser.add_argument("--data-dir", default=os.environ.get("HF_CALIBPRUNE_DATA_DIR", str(DEFAULT_DATA)))
    parser.add_argument("--max-minutes", type=float, required=True, help="Time budget; the grid is trimmed to fit.")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--limit", type=int, default=None, help="Evaluation windows / examples per task (default: all).")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--formats", default="plain,icl,cot")
    parser.add_argument("--zero-shot", default="lm-eval:zeroshot", help="Zero-shot tasks ('' for none).")
    parser.add_argument("--tiny", action="store_true", help="Tiny random model and tiny sizes, on the CPU.")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, str(REPO))
    from hf_calibprune.study import StudySettings, run_study

    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    data_dir = Path(args.data_dir)
    output = Path(args.output)
    if args.tiny:
        model = str(tiny_model_dir(output / "tiny_model", data_dir))
        args.num_samples, args.seq_len, args.limit = 4, 64, args.limit or 2
    elif args.model is None:
        from hf_calibprune.models.smollm2 import smollm2_checkpoint

        model = str(smollm2_checkpoint())
    else:
        model = args.model
    sources = tuple(name for name, folder in SOURCE_FOLDERS.items() if (data_dir / folder).is_dir()) + SYNTHETIC
    domains = ("wikitext2",) + tuple(f"ppl:{name}" for name in sources if name not in SYNTHETIC)
    zero_shot = tuple(task for task in args.zero_shot.split(",") if task)
    languages = tuple(lang for lang in LANGUAGES if (data_dir / "multilingual" / lang).is_dir())
    full = StudySettings(
        model=model,
        methods=tuple(args.methods.split(",")),
        sparsity=0.5,
        calibration=sources,
        formats=tuple(args.formats.split(",")),
        eval=domains + zero_shot,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        limit=args.limit,
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        baseline="c4",
        languages=languages,
        data_dir=str(data_dir),
        device=args.device,
    )
    # Time the dense model and the baseline cell (seed 0); the full study reuses both from the cache.
    probe = dataclasses.replace(full, methods=full.methods[:1], calibration=("c4",), formats=("plain",), seeds=full.seeds[:1], languages=full.languages[:1])
    probe_started = time.monotonic()
    result = run_study(probe, output, deadline=deadline)
    by_kind = {record.get("kind"): float(record.get("prune_seconds") or 0) + float(record.get("eval_seconds") or 0) for record in result.records}
    per_run = max(by_kind.get("pruned", 0.0), 1.0)
    per_language = max(by_kind.get("language", per_run), 1.0)
    logger.info("Probe: %.0f s (one grid run %.0f s, one language run %.0f s).", time.monotonic() - probe_started, per_run, per_language)

    remaining = deadline - time.monotonic()
    chosen = None
    for candidate in trimming_ladder(full):
        estimate = estimate_seconds(candidate, per_run, per_language)
        if estimate <= remaining:
            chosen = candidate
            break
    if chosen is None:
        logger.warning("Not even the smallest grid fits in %.0f s; keeping the probe's results.", remaining)
        chosen = probe
    trimmed = {
        field.name: getattr(chosen, field.name)
        for field in dataclasses.fields(chosen)
        if getattr(chosen, field.name) != getattr(full, field.name)
    }
    logger.info("Running %s (estimated %.0f s of %.0f s left).", "the full grid" if not trimmed else f"a trimmed grid: {trimmed}", estimate_seconds(chosen, per_run, per_language), remaining)
    result = run_study(chosen, output, deadline=deadline)
    summary = {
        "minutes": round((time.monotonic() - started) / 60, 2),
        "budget_minutes": args.max_minutes,
        "trimmed": {key: list(value) if isinstance(value, tuple) else value for key, value in trimmed.items()},
        "pruned": result.pruned,
        "reused": result.reused,
        "failed": result.failed,
        "skipped": result.skipped,
        "estimated_seconds_per_run": round(per_run, 1),
    }
    (output / "grid.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
