"""``push_to_hub``: publish a pruned checkpoint (or a model, saved first) in one commit."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CalibPruneError, CheckpointError
from .card import END_MARKER, START_MARKER, merge_model_card
from .publication import check_publishable
from .saving import CARD_FILE, save_sparse

__all__ = ["push_to_hub", "commit_message_for"]

logger = logging.getLogger(__name__)


def _summary(folder: Path) -> dict[str, Any]:
    from .info import load_pruning_info

    try:
        report = load_pruning_info(folder).report
    except CalibPruneError:
        return {}
    return report if isinstance(report, dict) else report.to_dict()


def commit_message_for(folder: str | os.PathLike) -> str:
    """A commit message naming the method, the measured sparsity and the calibration data of a saved checkpoint."""
    report = _summary(Path(folder))
    if not report:
        return "Upload pruned model with hf_calibprune"
    calibration = report.get("calibration") or {}
    names = [s.get("name") for s in calibration.get("sources") or [] if isinstance(s, dict) and s.get("name")]
    source = "+".join(names) or calibration.get("source") or "no calibration data"
    samples = calibration.get("num_samples")
    seq_len = calibration.get("seq_len")
    detail = f"{source}, {samples}x{seq_len} tokens" if samples and seq_len else str(source)
    sparsity = report.get("overall_sparsity")
    sparsity_text = f"{100 * sparsity:.1f}% sparse" if isinstance(sparsity, (int, float)) else "sparse"
    return (
        f"Upload {report.get('method', 'pruned')} {report.get('pattern', '')} model ({sparsity_text}, "
        f"calibration: {detail}) with hf_calibprune"
    ).replace("  ", " ")


def _files(folder: Path) -> list[Path]:
    # Hidden entries (.git, .cache, temporary files) never go to the Hub.
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _merged_readme(api: Any, repo_id: str, folder: Path, revision: str | None) -> bytes | None:
    """The local card merged into the README already on the Hub, or ``None`` to upload the local one as is."""
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    local = folder / CARD_FILE
    if not local.is_file():
        return None
    with tempfile.TemporaryDirectory(prefix="hf_calibprune-readme-") as cache_dir:
        try:
            remote_path = hf_hub_download(
                repo_id, CARD_FILE, revision=revision, endpoint=api.endpoint, token=api.token, cache_dir=cache_dir
            )
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return None
        except Exception as error:  # noqa: BLE001 - a README we cannot read is replaced, as a plain upload would
            logger.info("Could not read the README of %s (%s); uploading the local one.", repo_id, error)
            return None
        remote = Path(remote_path).read_text(encoding="utf-8")
    card = ModelCard(local.read_text(encoding="utf-8"), ignore_metadata_errors=True)
    text = card.text
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < 0:
        return None
    section = text[start : end + len(END_MARKER)]
    return str(merge_model_card(remote, card.data, section)).encode("utf-8")


def push_to_hub(
    model_or_dir: Any,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    format: str = "dense",
    tokenizer: Any = None,
    revision: str | None = None,
    create_pr: bool = False,
    **save_kwargs: Any,
) -> Any:
    """Upload a pruned checkpoint to the Hugging Face Hub in one commit.

    Args:
        model_or_dir (`PreTrainedModel`, `str` or `os.PathLike`): a directory written by
            :func:`~hf_calibprune.save_sparse`, or a pruned model (saved first to a local folder with ``format`` and
            ``tokenizer``; the folder is deleted after a successful upload and kept, for a retry, after a failed one).
        repo_id (`str`): ``"user/name"``; created if needed.
        private (`bool`, *optional*, defaults to `False`): create the repository as private.
        token (`str`, *optional*): Hub token; defaults to the usual places (``HF_TOKEN``, ``hf auth login``).
        commit_message (`str`, *optional*): defaults to one naming method, measured sparsity and calibration.
        format (`str`, *optional*, defaults to `"dense"`): checkpoint format when a model is given.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): saved with a model.
        revision (`str`, *optional*): branch to commit to.
        create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
        save_kwargs: passed to :func:`~hf_calibprune.save_sparse` when a model is given.

    Returns:
        `huggingface_hub.CommitInfo`

    Raises:
        :class:`~hf_calibprune.errors.CheckpointError`: the folder is not a checkpoint; a file to upload (or the README
            merged with the one on the Hub) holds a private path, such as a calibration file's absolute path or the
            user's home (the message names the file and the string; nothing is uploaded); or creating the
            repository or uploading failed (the message names the intact local folder and the command that retries).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    temporary: Path | None = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = Path(model_or_dir)
        if not folder.is_dir() or not (folder / "config.json").is_file():
            raise CheckpointError(f"'{folder}' is not a saved checkpoint (no config.json); save it with save_sparse first.")
    else:
        temporary = Path(tempfile.mkdtemp(prefix="hf_calibprune-push-"))
        try:
            folder = save_sparse(model_or_dir, temporary / "checkpoint", format=format, tokenizer=tokenizer, **save_kwargs)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    files = _files(folder)
    check_publishable(folder, files=files)  # before anything is created on the Hub
    message = commit_message or commit_message_for(folder)
    api = HfApi(token=token)
    retry = f"hf-calibprune push {folder} {repo_id}" + (" --private" if private else "")
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = getattr(repo_url, "repo_id", None) or repo_id
        readme = _merged_readme(api, repo_id, folder, revision)
        if readme is not None:
            check_publishable(folder, files=[folder / CARD_FILE], replaced={CARD_FILE: readme})
        operations = []
        for path in files:
            relative = path.relative_to(folder).as_posix()
            content: Any = readme if relative == CARD_FILE and readme is not None else str(path)
            operations.append(CommitOperationAdd(path_in_repo=relative, path_or_fileobj=content))
        info = api.create_commit(
            repo_id, operations, commit_message=message, revision=revision, create_pr=create_pr
        )
    except (KeyboardInterrupt, SystemExit, CheckpointError):
        raise
    except Exception as error:  # noqa: BLE001 - every Hub/network failure gets the same retry advice
        raise CheckpointError(
            f"Uploading {folder} to '{repo_id}' failed: {type(error).__name__}: {error}. The local checkpoint in "
            f"{folder} is complete and untouched; retry with `{retry}` (or `hf upload {repo_id} {folder}`)."
        ) from error
    logger.info("Pushed %s to %s: %s", folder, repo_id, getattr(info, "commit_url", info))
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    return info
