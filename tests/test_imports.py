"""The package's import graph, read from its layout: the modules under `stego_steps/stages/` are the workflow's
stages (one `main()` each), the flat modules are the library, and nothing below imports what sits above."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stego_steps"
# Library modules that may still be run with `python -m`: tools for the workflow, not steps of it.
# provenance: `record`, the last command of every job (it writes the job's provenance records);
# config: the config-file checker for users (`python -m stego_steps.config FILE...`).
LIBRARY_COMMANDS = {"provenance", "config"}


def stages() -> set[str]:
    return {p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem != "__init__"}


def library() -> set[str]:
    return {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def package_imports(path: Path) -> set[str]:
    """Dotted names (below `stego_steps.`) that `path` imports, at any level of the file, also inside functions:
    `stages.knn` for a stage, `knn` for a library module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stego_steps":
            if node.module in ("stego_steps", "stego_steps.stages"):
                prefix = node.module.removeprefix("stego_steps").lstrip(".")
                found |= {f"{prefix}.{a.name}".lstrip(".") for a in node.names}
            else:
                found.add(_module_name(node.module))
        elif isinstance(node, ast.Import):
            found |= {_module_name(a.name) for a in node.names if a.name.startswith("stego_steps.")}
    return found


def _module_name(dotted: str) -> str:
    """`stego_steps.x.y` → `x`; a stage `stego_steps.stages.y.z` → `stages.y`."""
    parts = dotted.split(".")
    return ".".join(parts[1:3]) if parts[1] == "stages" and len(parts) > 2 else parts[1]


def top_level_functions(path: Path) -> set[str]:
    return {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}


def runs_as_main(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_the_layout_has_both_floors():
    assert {"prepare", "extract", "knn", "train", "evaluate"} <= stages()
    assert {"loss", "metrics", "crf", "knn"} <= library()  # the public names' modules stay library modules


def test_every_stage_has_a_main_and_runs_as_a_command():
    assert {s for s in stages() if "main" not in top_level_functions(PACKAGE / "stages" / f"{s}.py")} == set()
    assert {s for s in stages() if not runs_as_main(PACKAGE / "stages" / f"{s}.py")} == set()


def test_no_library_module_has_a_main():
    assert {m for m in library() if "main" in top_level_functions(PACKAGE / f"{m}.py")} == set()
    assert {m for m in library() if runs_as_main(PACKAGE / f"{m}.py")} == LIBRARY_COMMANDS


def test_no_stage_imports_another_stage():
    crossings = {(s, i) for s in stages() for i in package_imports(PACKAGE / "stages" / f"{s}.py")
                 if i.startswith("stages")}
    assert crossings == set()


def test_no_library_module_imports_a_stage():
    crossings = {(m, i) for m in library() for i in package_imports(PACKAGE / f"{m}.py") if i.startswith("stages")}
    assert crossings == set()


def test_the_workflow_imports_no_stage():
    # The rules run stages as commands (`python -m stego_steps.stages.<stage>`); their Python imports library code.
    pattern = re.compile(r"^\s*(from\s+stego_steps\.stages\b|from\s+stego_steps\s+import\s.*\bstages\b"
                         r"|import\s+stego_steps\.stages\b)", re.M)
    files = [*ROOT.glob("workflow/**/*.smk"), *ROOT.glob("workflow/Snakefile"), ROOT / "Snakefile"]
    assert [str(f.relative_to(ROOT)) for f in files if f.exists() and pattern.search(f.read_text())] == []


def test_the_graph_parser_sees_every_import_form(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from stego_steps import a, b as c\nfrom stego_steps.d import e\nimport stego_steps.f\n"
                    "def g():\n    from stego_steps.h import i\n"
                    "from stego_steps.stages import j\nfrom stego_steps.stages.k import main\n")
    assert package_imports(path) == {"a", "b", "d", "f", "h", "stages.j", "stages.k"}


def test_no_module_shadows_the_standard_library():
    names = library() | stages()
    assert names & set(sys.stdlib_module_names) == set()


def test_stages_without_a_model_start_without_torch():
    # Importing torch takes seconds per job; these stages read stores and predictions only.
    for stage in ("prepare", "evaluate"):
        code = f"import sys, stego_steps.stages.{stage}; assert 'torch' not in sys.modules, '{stage} imports torch'"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
