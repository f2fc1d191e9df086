"""Code digests and provenance records: an edit that can change a stage's result changes its digest, one that
cannot (docstrings, comments, formatting, logging, help texts, error messages) does not."""

import shutil
from pathlib import Path

import pytest

from stego_steps import provenance

PACKAGE = Path(provenance.__file__).resolve().parent
STAGES = tuple(f"stages.{stage}" for stage in (
    "prepare", "extract", "knn", "calibrate", "train", "cluster", "probe", "predict", "segment", "evaluate", "figures",
    "tables", "import_checkpoint"))


@pytest.fixture
def package(tmp_path) -> Path:
    """A private copy of the package, to edit."""
    copy = tmp_path / "stego_steps"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def digests(package_dir: Path) -> dict[str, str]:
    provenance.clear_caches()  # the files were edited since the last call
    return {stage: provenance.code_digest(stage, package_dir=package_dir) for stage in STAGES}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    path.write_text(text.replace(old, new))


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def test_an_unedited_copy_has_the_same_digests(package):
    assert digests(package) == digests(PACKAGE)


def test_docstrings_comments_formatting_logging_and_help_change_nothing(package):
    before = digests(package)
    loss = package / "loss.py"
    text = loss.read_text()
    # a docstring edit, a comment, blank lines
    text = text.replace('"""', '"""Edited. ', 1) + "\n\n# a comment\n"
    loss.write_text(text)
    # a log message and an option's help text in a stage's main()
    edit(package / "stages" / "train.py", 'log.info("loss shifts %s and weights %s from %s"',
         'log.info("shifts %s, weights %s (from %s)"')
    edit(package / "stages" / "train.py", 'help="KNN table (.npy)"', 'help="the KNN table"')
    # a helper that only shows progress and logs
    edit(package / "cli.py", 'log.info("%s: %d done, %.2f it/s", desc, done, rate)',
         'log.info("%s: %d done (%.2f it/s)", desc, done, rate)')
    assert digests(package) == before


def test_a_compute_function_edit_changes_exactly_the_stages_that_call_it(package):
    before = digests(package)
    # the correlation loss: the stages that train a head (the calibration trains short candidate heads)
    edit(package / "loss.py", "def stego_loss(", "def _unused():\n    return 0\n\n\ndef stego_loss(")
    assert changed(before, digests(package)) == set()  # a definition nobody calls decides nothing
    text = (package / "loss.py").read_text()
    body_start = text.index("def stego_loss(")
    returns = text.index("return", body_start)
    (package / "loss.py").write_text(text[:returns] + "x_unused = 1\n    " + text[returns:])
    after = digests(package)
    assert changed(before, after) == {"stages.calibrate", "stages.train"}


def test_an_evaluation_edit_changes_only_the_evaluation(package):
    before = digests(package)
    metrics = (package / "metrics.py").read_text()
    start = metrics.index("def scores(")
    returns = metrics.index("return", start)
    (package / "metrics.py").write_text(metrics[:returns] + "unused = 0\n    " + metrics[returns:])
    callers = {stage for stage in STAGES if "metrics:scores" in provenance.code_closure(stage, package_dir=package)}
    assert "stages.evaluate" in callers
    assert not callers & {"stages.extract", "stages.knn", "stages.calibrate", "stages.train", "stages.cluster",
                          "stages.segment"}
    assert changed(before, digests(package)) == callers


def test_closures_follow_imports_inside_functions_and_classes():
    closure = provenance.code_closure("stages.train")
    assert "head_training:train" in closure and "loss:stego_loss" in closure and "head:SegmentationHead" in closure
    assert not any(key.startswith(("cli:", "errors:")) for key in closure)


def test_chain_digest_and_differences():
    steps = {"extract": ("extract", {"res": 64}), "train": ("train", {"steps": 20})}
    base = provenance.chain(steps)
    assert provenance.chain(dict(reversed(list(steps.items())))) == base  # order does not matter
    more_steps = provenance.chain({**steps, "train": ("train", {"steps": 30})})
    assert more_steps["digest"] != base["digest"]
    assert provenance.differences(base, more_steps) == ["settings of train"]
    assert provenance.differences(base, base) == []
    recorded = {**base, "steps": {**base["steps"], "train": {**base["steps"]["train"], "code": "other"}}}
    assert provenance.differences(recorded, base) == ["code of train"]
    assert provenance.only_code_differs(recorded, base) and not provenance.only_code_differs(recorded, more_steps)
    assert provenance.summary(["a", "b", "c", "d", "e", "f"]) == "a, b, c, d and 2 more"


def test_records_round_trip(tmp_path):
    artifact = tmp_path / "results" / "head.pt"
    artifact.parent.mkdir(parents=True)
    artifact.write_bytes(b"weights")
    value = {"rule": "train", "wildcards": {"ds": "demo"}, **provenance.chain({"train": ("train", {})})}
    (path,) = provenance.write_records([str(artifact)], value, workdir=tmp_path)
    assert path == tmp_path / ".provenance" / "results" / "head.pt.json"
    record = provenance.read_record(artifact, workdir=tmp_path)
    assert {k: record[k] for k in value} == value and record["version"] == provenance.version()
    assert record["bytes"] == len(b"weights")
    folder = tmp_path / "results" / "mapping"
    folder.mkdir()
    (folder / "a.csv").write_text("xy")
    (folder / "b.csv").write_text("z")
    assert provenance.size(folder) == 3


def test_every_step_module_of_the_workflow_is_a_stage_with_a_main():
    # A misspelt or moved module would fingerprint no code at all: its steps would never re-run on an edit.
    import re

    rules = (PACKAGE / "steps.py").read_text()
    named = set(re.findall(r'\(f?"(stages\.[\w{}]+)"', rules)) - {"stages.{stage}"}
    assert named and all(f"{m}:main" in provenance.code_closure(m) for m in named | set(STAGES))
    assert re.findall(r'": \("(?!stages\.)(\w+)",', rules) == []
