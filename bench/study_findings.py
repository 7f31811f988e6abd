"""The comparisons behind docs/study.md's reading of the seed paper's findings, from a finished study's runs.

``hf-calibprune study`` compares every cell with one baseline (``results.md``, ``matrix.csv``). The findings
need other pairs too: each source's ``icl`` against its ``zero`` format and ``cot`` against ``icl`` (finding 4),
and each task source against every other source on the source's own held-apart text (finding 3). This script
reads the cached runs of one or more study output directories and prints those comparisons as markdown tables,
with the same paired bootstrap (same evaluation windows, seeds paired) and verdicts as the study::

    PYTHONPATH=$PWD python bench/study_findings.py OUT [OUT_SPARSEGPT ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_calibprune.study.analysis import Cell, group_cells, metric_names
from hf_calibprune.study.outputs import comparison_text, markdown_table


def load_cells(directories: list[str]) -> list[Cell]:
    records = [json.loads(path.read_text()) for d in directories for path in sorted(Path(d, "runs").glob("*.json"))]
    return [cell for cell in group_cells(records) if cell.kind == "pruned"]


def pair_rows(pairs: list[tuple[Cell, Cell]], metrics: list[str]) -> list[dict]:
    rows = []
    for cell, other in pairs:
        row = {"cell": f"{cell.method} {cell.label}", "against": f"{other.method} {other.label}",
               "seeds": f"{len(cell.records)} / {len(other.records)}"}
        for metric in metrics:
            text, verdict = comparison_text(cell, other, metric)
            row[metric.split("/")[0]] = f"{text} {verdict}".strip()
        rows.append(row)
    return rows


def format_pairs(cells: list[Cell]) -> list[tuple[Cell, Cell]]:
    """ICL against zero-shot and CoT against ICL, within each method and source."""
    by_key = {(c.method, c.calibration, c.format): c for c in cells}
    pairs = []
    for (method, source, fmt), cell in by_key.items():
        base = {"icl": "zero", "cot": "icl"}.get(fmt)
        if base and (method, source, base) in by_key:
            pairs.append((cell, by_key[method, source, base]))
    return pairs


def own_domain_rows(cells: list[Cell], metrics: list[str]) -> list[dict]:
    """For each domain that is some source's own text: that source (icl) against every other cell, on that domain."""
    rows = []
    for metric in metrics:
        domain = metric.split("/")[0].removeprefix("ppl:")
        for own in (c for c in cells if c.calibration == domain and c.format in ("icl", "plain")):
            better = worse = same = 0
            for other in cells:
                if other.calibration == domain or other.method != own.method:
                    continue
                verdict = comparison_text(own, other, metric)[1]
                better += verdict == "better"
                worse += verdict == "worse"
                same += verdict == "not distinguishable"
            rows.append({"domain": metric.split("/")[0], "own-source cell": f"{own.method} {own.label}",
                         "better than": better, "not distinguishable from": same, "worse than": worse})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outputs", nargs="+", help="Study output directories (each with runs/).")
    args = parser.parse_args()
    cells = load_cells(args.outputs)
    records = [record for cell in cells for record in cell.records]
    metrics = [m for m in metric_names(records) if m.endswith("/ppl")]
    columns = ["cell", "against", "seeds", *[m.split("/")[0] for m in metrics]]
    print("## Formats: ICL against zero-shot, CoT against ICL (perplexity change, 95 % interval, verdict)\n")
    print(markdown_table(columns, pair_rows(format_pairs(cells), metrics)))
    print("\n## Each task source on its own held-apart text, against every other cell of its method\n")
    print(markdown_table(["domain", "own-source cell", "better than", "not distinguishable from", "worse than"],
                         own_domain_rows(cells, metrics)))


if __name__ == "__main__":
    main()
