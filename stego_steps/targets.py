"""The targets a request may name, checked at start-up against the configured datasets, variants and seeds.

A path under `results/<dataset>/` names a configured dataset; under `runs/<variant>/seed<N>/` one of that
dataset's variants and seeds; under `features/<key>/`, `plan/<key>/` or `baselines/<key>/` one of the keys of
its variants. Anything else is left to Snakemake (a rule name, a path no rule makes).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from stego_steps.errors import first_lines


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a configured dataset's paths may hold."""

    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    feature_keys: tuple[str, ...]
    baseline_keys: tuple[str, ...]
    labelled: bool = True


def valid_targets(datasets: Mapping[str, Dataset], tables: Iterable[str] = ()) -> list[str]:
    """The targets to offer: the rule names, each dataset's table, each run's table, the experiment tables."""
    out = ["all (or no target): the datasets under `run:` and their pictures", "tables", "figures"]
    for ds, d in datasets.items():
        table = "miou.csv" if d.labelled else "clusters.csv"
        out.append(f"results/{ds}/{table}")
        out.append(f"results/{ds}/runs/<variant>/seed<seed>/{table}, variant one of {', '.join(d.variants)}; "
                   f"seed one of {', '.join(map(str, d.seeds))}")
    out.extend(tables)
    return out


def target_problem(target: str, datasets: Mapping[str, Dataset]) -> str | None:
    """What is wrong with `target` (the dataset, variant, seed or key it names is not configured), else None."""
    parts = target.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "results" or parts[1] == "tables":
        return None
    ds = parts[1]
    if ds not in datasets:
        return (f"no dataset '{ds}' is configured (datasets: {', '.join(datasets) or 'none'}); add it under "
                "`datasets:` in the config, or fix the name")
    d = datasets[ds]
    if len(parts) >= 3 and parts[2] == "runs" and len(parts) >= 4:
        if parts[3] not in d.variants:
            return (f"dataset '{ds}' has no variant '{parts[3]}' (its variants: {', '.join(d.variants)}); add it "
                    f"under `datasets.{ds}.variants` or `experiments:`, or fix the name")
        if len(parts) >= 5:
            return _seed_problem(ds, parts[4], d.seeds)
    if len(parts) >= 4 and parts[2] in ("features", "plan") and parts[3] not in d.feature_keys:
        return (f"dataset '{ds}' has no feature key '{parts[3]}' (its keys: {', '.join(d.feature_keys)}); feature "
                "folders are named by the settings of the configured variants")
    if len(parts) >= 4 and parts[2] == "baselines":
        if parts[3] not in d.baseline_keys:
            return (f"dataset '{ds}' has no baseline key '{parts[3]}' (its keys: {', '.join(d.baseline_keys)}); "
                    "baseline folders are named by the settings of the configured variants")
        if len(parts) >= 5:
            return _seed_problem(ds, parts[4], d.seeds)
    return None


def _seed_problem(ds: str, part: str, seeds: tuple[int, ...]) -> str | None:
    match = re.fullmatch(r"seed(\d+)", part)
    if match and int(match.group(1)) in seeds:
        return None
    return (f"dataset '{ds}' has no run '{part}' (its seeds: {', '.join(f'seed{s}' for s in seeds)}); add the seed "
            f"to `datasets.{ds}.seeds`, or fix the name")


def check_targets(targets: Iterable[str], datasets: Mapping[str, Dataset], tables: Iterable[str] = (),
                  limit: int = 40) -> str | None:
    """One message for every bad target with the valid ones listed, or None when all are fine."""
    problems = [f"{t}: {p}" for t in targets if (p := target_problem(t, datasets))]
    if not problems:
        return None
    valid = first_lines(valid_targets(datasets, tables), limit)
    return "\n".join(problems) + "\nvalid targets:\n" + "\n".join(f"  {v}" for v in valid)


def snakemake_cli_args(argv: list[str]) -> Any:
    """The parsed command line of a Snakemake CLI process (its targets, `--unlock`), or None where Snakemake
    itself reports it as bad."""
    import contextlib
    import io

    from snakemake.cli import get_argument_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return get_argument_parser().parse_known_args(argv)[0]
    except SystemExit:
        return None
