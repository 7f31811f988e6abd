"""``hf-calibprune push DIR REPO``: upload a saved checkpoint to the Hugging Face Hub in one commit."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="Upload a checkpoint directory written by save_sparse / prune --output to the Hub.",
        description=(
            "Create REPO if needed and upload DIR in one commit whose message names the method, the measured "
            "sparsity and the calibration data. An existing README on the Hub keeps its text; hf_calibprune's "
            "section is updated. The token comes from --token, HF_TOKEN or `hf auth login`."
        ),
    )
    parser.add_argument("directory", metavar="DIR", help="Checkpoint directory to upload.")
    parser.add_argument("repo_id", metavar="REPO", help="Hub repository id, e.g. user/model-wanda-50.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    parser.add_argument("--commit-message", default=None, help="Commit message (default: describes the pruning).")
    parser.add_argument("--revision", default=None, help="Branch to commit to (default: main).")
    parser.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..hub import push_to_hub

    info = push_to_hub(
        args.directory,
        args.repo_id,
        private=args.private,
        token=args.token,
        commit_message=args.commit_message,
        revision=args.revision,
        create_pr=args.create_pr,
    )
    print(f"Uploaded {args.directory} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0
