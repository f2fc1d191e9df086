"""Stage `tables`: the experiment tables, from the `miou.csv` of every run (variant × seed) they cover.

- `main`: per dataset, variant (backbone) and method — the head's cluster and linear probes and the same two
  probes on the raw backbone features (the paper's baselines) — with and without the CRF: pixel accuracy and
  mIoU as mean ± sample standard deviation over the seeds (n shown), beside the paper's reported numbers
  where a source exists (blank otherwise) and our difference to them.
- `ablation`: one row per variant of a dataset that switches one component of the method, ✓/✗ per component
  (the CRF axis from the full variant's rows without it), cluster and linear scores as mean ± std over the
  seeds, and the cluster mIoU's change against the full method.

Both are written as CSV (numbers) and Markdown (formatted). Reads no model: no torch import.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from stego_steps.cli import setup_logging
from stego_steps.errors import cli
from stego_steps.experiment_tables import (
    ablation_markdown,
    ablation_table,
    main_markdown,
    main_table,
    read_runs,
    write_table,
)

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=("main", "ablation"))
    parser.add_argument("--runs", required=True, type=json.loads,
                        help="JSON list of runs: dataset, variant, seed, kind, backbone, path (its miou.csv); "
                             "for `ablation` also `axes` (component → kept)")
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--out-md", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    rows = read_runs(args.runs)
    if args.table == "main":
        table = main_table(rows)
        text = main_markdown(table)
    else:
        table = ablation_table(rows, {run["variant"]: run["axes"] for run in args.runs})
        text = ablation_markdown(table)
    write_table(table, text, args.out_csv, args.out_md)
    log.info("%s table: %d rows from %d runs → %s", args.table, len(table), len(args.runs), args.out_md)


if __name__ == "__main__":
    cli(main)
