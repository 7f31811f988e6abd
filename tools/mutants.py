"""The mutation check: apply each realistic bug of ``tools/mutants.toml`` to a scratch copy of the repository, run
the tests that should catch it, and report which bugs the tests kill.

    python tools/mutants.py                  # every mutant (what `make mutants` runs)
    python tools/mutants.py --only NAME ...  # some of them
    python tools/mutants.py --list           # names and descriptions

The working tree is never modified: its tracked and untracked-but-not-ignored files are copied to a temporary
directory, where each mutant is applied, tested and reverted in turn. The unmutated copy first runs every selected
test once (the baseline): a test that already fails there would "kill" any mutant. A mutant whose original text is
not found exactly once in its file is an error, never a kill. Prints one line per mutant and ``N of M killed``;
exits 0 only when every mutant was killed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = REPO / "tools" / "mutants.toml"
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


@dataclass
class Mutant:
    """One realistic bug: ``edits`` (``(original, replacement)`` pairs) applied to ``file``; ``tests`` should fail."""

    name: str
    file: str
    description: str
    tests: list[str]
    edits: list[tuple[str, str]] = field(default_factory=list)


def load_mutants(path: Path) -> list[Mutant]:
    """Read and check the mutant list (see the comment at the top of ``tools/mutants.toml``)."""
    with path.open("rb") as handle:
        entries = tomllib.load(handle).get("mutant", [])
    mutants, names = [], set()
    for number, entry in enumerate(entries, 1):
        where = f"{path.name}: mutant #{number} ({entry.get('name', 'unnamed')})"
        missing = [key for key in ("name", "file", "description", "tests", "original", "replacement") if key not in entry]
        if missing:
            raise SystemExit(f"{where} lacks {', '.join(missing)}.")
        if entry["name"] in names:
            raise SystemExit(f"{where}: the name is used twice.")
        if not entry["tests"] or not all(isinstance(t, str) for t in entry["tests"]):
            raise SystemExit(f"{where}: `tests` must be a non-empty list of pytest node ids or paths.")
        edits = [(entry["original"], entry["replacement"])]
        edits += [(extra["original"], extra["replacement"]) for extra in entry.get("also", [])]
        if any(original == replacement for original, replacement in edits):
            raise SystemExit(f"{where}: a replacement equals its original.")
        names.add(entry["name"])
        mutants.append(Mutant(entry["name"], entry["file"], entry["description"], list(entry["tests"]), edits))
    return mutants


def scratch_copy(destination: Path) -> None:
    """Copy the files git would commit (tracked, and untracked but not ignored) from the working tree."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode()
    for relative in filter(None, listing.split("\0")):
        source = REPO / relative
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def mutate(text: str, mutant: Mutant) -> tuple[str | None, str]:
    """``(mutated text, "")``, or ``(None, why)`` when an original is not found exactly once."""
    for original, replacement in mutant.edits:
        count = text.count(original)
        if count != 1:
            first_line = original.strip().splitlines()[0] if original.strip() else repr(original)
            state = "not found" if count == 0 else f"found {count} times"
            return None, f"original text {state} in {mutant.file}: {first_line!r}"
        text = text.replace(original, replacement)
    return text, ""


def run_pytest(scratch: Path, tests: list[str], timeout: float) -> tuple[int | None, str, float]:
    """``(exit code or None on timeout, output, seconds)`` of pytest on ``tests`` in ``scratch``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(scratch), os.environ.get("PYTHONPATH", "")])),
        "PYTHONDONTWRITEBYTECODE": "1",  # a mutant of the same size within the same second must not reuse a .pyc
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return None, output, time.perf_counter() - started
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - started


def check_imports_from(scratch: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    found = subprocess.run(
        [sys.executable, "-c", "import hf_calibprune; print(hf_calibprune.__file__)"],
        cwd=scratch, env=env, capture_output=True, text=True,
    ).stdout.strip()
    if not found.startswith(str(scratch)):
        raise SystemExit(f"the scratch copy imports hf_calibprune from {found!r}, not from {scratch}; cannot test mutants.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=Path, default=DEFAULT_LIST, help="the mutant list (TOML)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run; a mutant that times out is killed")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the selected tests unmutated first")
    args = parser.parse_args(argv)

    mutants = load_mutants(args.mutants)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutants})
        if unknown:
            raise SystemExit(f"unknown mutants: {', '.join(unknown)}; see --list.")
        mutants = [m for m in mutants if m.name in args.only]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:<36} {mutant.file}: {mutant.description}")
        return 0

    width = max(len(m.name) for m in mutants)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # still remove the scratch copy
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="hf_calibprune-mutants-"))
    try:
        scratch_copy(scratch)
        check_imports_from(scratch)
        prepared, errors = [], {}
        for mutant in mutants:
            path = scratch / mutant.file
            if not path.is_file():
                errors[mutant.name] = f"{mutant.file} does not exist"
                continue
            mutated, why = mutate(path.read_text(encoding="utf-8"), mutant)
            if mutated is None:
                errors[mutant.name] = why
                continue
            try:
                compile(mutated, mutant.file, "exec")
            except SyntaxError as error:
                errors[mutant.name] = f"the mutated {mutant.file} does not compile: {error}"
                continue
            prepared.append((mutant, mutated))

        selected = list(dict.fromkeys(test for mutant, _ in prepared for test in mutant.tests))
        if selected and not args.skip_baseline:
            print(f"baseline: {len(selected)} test selections on the unmutated copy ...", flush=True)
            code, output, seconds = run_pytest(scratch, selected, args.timeout)
            if code != 0:
                print(output[-4000:])
                print(f"baseline FAILED ({'timeout' if code is None else f'pytest exit {code}'}, {seconds:.0f} s): "
                      "the tests fail without any mutant; fix them first.")
                return 2
            print(f"baseline passed in {seconds:.0f} s", flush=True)

        killed = 0
        for mutant in mutants:
            if mutant.name in errors:
                print(f"ERROR     {mutant.name:<{width}}  {errors[mutant.name]}", flush=True)
                continue
            mutated = next(text for m, text in prepared if m is mutant)
            path = scratch / mutant.file
            original = path.read_text(encoding="utf-8")
            path.write_text(mutated, encoding="utf-8")
            try:
                code, output, seconds = run_pytest(scratch, mutant.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            if code is None or code == 1:
                killed += 1
                by = "timeout" if code is None else (_FAILED.findall(output) or ["a test"])[0]
                print(f"KILLED    {mutant.name:<{width}}  {seconds:5.0f} s  by {by}", flush=True)
            elif code == 0:
                print(f"SURVIVED  {mutant.name:<{width}}  {seconds:5.0f} s  {mutant.description}", flush=True)
            else:
                tail = output.strip().splitlines()[-1] if output.strip() else ""
                print(f"ERROR     {mutant.name:<{width}}  pytest exit {code} (not a test failure): {tail}", flush=True)
        print(f"{killed} of {len(mutants)} killed ({time.perf_counter() - started:.0f} s)")
        return 0 if killed == len(mutants) else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
