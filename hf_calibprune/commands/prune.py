"""``hf-calibprune prune``: load a model, prune it, print the report and save the checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from .config_flags import add_config_flags, config_overrides

__all__ = ["add_parser", "run", "config_from_args"]

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prune",
        help="Prune a model with calibration data and save the sparse checkpoint.",
        description="Prune a causal LM layer by layer. Flags override values from --config.",
    )
    parser.add_argument("--model", required=True, help="Hub id or local directory of the model.")
    parser.add_argument("--gguf-file", help="GGUF file name inside --model (loaded dequantized).")
    parser.add_argument("--dtype", default="auto", help="torch dtype to load the model in (auto, float32, bfloat16, float16).")
    parser.add_argument("--config", help="A PruningConfig as .json or .yaml (see configs/).")
    parser.add_argument(
        "--data-dir",
        help="Local mirror the calibration sources are read from, laid out as <source name>/<files> "
        "(default: $HF_CALIBPRUNE_DATA_DIR).",
    )
    parser.add_argument(
        "--device-map",
        help="accelerate device map for loading: auto, a device (cpu, cuda:0), or JSON such as "
        '\'{"model.layers.0": "disk", "": "cpu"}\' (a .json file path also works).',
    )
    parser.add_argument("--offload-folder", help="Folder for weights the device map offloads to disk.")
    parser.add_argument("--output", help="Directory to save the pruned checkpoint to.")
    parser.add_argument("--format", default="dense", choices=["dense", "compact"], help="Checkpoint format.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output.")
    parser.add_argument("--push-to-hub", metavar="REPO", help="Upload the pruned checkpoint to this Hub repo.")
    parser.add_argument("--private", action="store_true", help="With --push-to-hub: create the repo private.")
    parser.add_argument("--hub-token", help="With --push-to-hub: a Hub token (default: the usual login).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument(
        "--resume-dir",
        help="Save progress here after every block; rerunning the same command resumes at the first unfinished "
        "block (bit-identical result). Removed once --output is saved.",
    )
    from ..config import PruningConfig

    add_config_flags(parser, PruningConfig)
    parser.set_defaults(func=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """Build the PruningConfig: --config file first, then every flag given on the command line."""
    from ..config import PruningConfig

    data: dict[str, Any] = PruningConfig.from_pretrained(args.config).to_dict() if args.config else {}
    data.pop("hf_calibprune_version", None)
    data = config_overrides(args, PruningConfig, data)
    if getattr(args, "data_dir", None):
        data["calibration"] = _with_data_dir(data.get("calibration", "self"), args.data_dir)
    return PruningConfig.from_dict(data)


def _with_data_dir(calibration: Any, data_dir: str) -> dict[str, Any]:
    """The calibration spec as a CalibrationConfig (in its JSON form) reading from ``data_dir``."""
    from ..errors import ConfigError

    if isinstance(calibration, dict) and "calibration_config" in calibration:
        return {"calibration_config": {**calibration["calibration_config"], "data_dir": data_dir}}
    if isinstance(calibration, (str, list)):
        return {"calibration_config": {"sources": calibration, "data_dir": data_dir}}
    raise ConfigError(
        f"--data-dir applies to calibration sources read from files, not to {calibration!r}; pass "
        "--calibration c4 (or another source name) with it."
    )


def run(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub, save_sparse
    from ..hub.atomic import check_target
    from ..models.loading import load_model_and_tokenizer
    from ..engine.distributed import barrier, init_distributed, is_main_process
    from ..pruner import CalibratedPruner

    config = config_from_args(args)
    init_distributed()  # under accelerate launch / torchrun: every process prunes, only the main one writes
    if args.output and is_main_process():
        check_target(args.output, overwrite=args.overwrite)
    _check_model_source(args.model, args.gguf_file)
    model, tokenizer = load_model_and_tokenizer(
        args.model,
        dtype=args.dtype,
        gguf_file=args.gguf_file,
        device_map=_device_map(args.device_map),
        offload_folder=args.offload_folder,
    )
    CalibratedPruner(
        config, tokenizer=tokenizer, progress=not args.no_progress, checkpoint_dir=args.resume_dir
    ).prune(model)
    if is_main_process():
        print(model.pruning_report.summary_table())
        command = shlex.join(["hf-calibprune", *getattr(args, "argv", sys.argv[1:])])
        if args.output:
            path = save_sparse(
                model, args.output, format=args.format, tokenizer=tokenizer, overwrite=args.overwrite, command=command
            )
            print(f"Saved {args.format} checkpoint to {Path(path)}")
            if args.resume_dir:
                from ..engine.checkpointing import remove_checkpoint

                remove_checkpoint(args.resume_dir)
        if args.push_to_hub:
            source = Path(args.output) if args.output else model
            push_to_hub(source, args.push_to_hub, private=args.private, token=args.hub_token, format=args.format,
                        tokenizer=None if args.output else tokenizer)
            print(f"Pushed to {args.push_to_hub}")
    barrier()
    return 0


def _device_map(value: str | None) -> Any:
    """``--device-map``: ``auto``/a device name as is, else a JSON mapping (inline or a file)."""
    from ..errors import ConfigError

    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.startswith("{"):
        if not text.endswith(".json"):
            return text
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"--device-map file {value} cannot be read: {error}") from error
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--device-map is not valid JSON ({error}); pass e.g. '{{\"\": \"cpu\"}}' or auto.") from error
    if not isinstance(mapping, dict):
        raise ConfigError("--device-map JSON must map module names to devices, e.g. {\"model.layers.0\": \"disk\"}.")
    return mapping


def _check_model_source(model: str, gguf_file: str | None) -> None:
    """A local model path that is missing or holds no model fails here, not as a Hub lookup of a path."""
    from ..errors import CheckpointError

    path = Path(model).expanduser()
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if not path.exists():
        if looks_local:
            raise CheckpointError(f"--model '{model}' does not exist; pass a model directory or a Hub id (org/name).")
        return
    if path.is_dir() and not (path / "config.json").is_file() and not gguf_file:
        raise CheckpointError(
            f"--model '{model}' holds no config.json; pass the directory written by save_pretrained, or a GGUF file "
            "with --gguf-file."
        )
