"""The package's import graph: stage modules sit on one floor above the library modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "stego_steps"
# The stage modules: each is one step of the workflow with a `main()` CLI.
STAGES = {"prepare", "plan", "extract", "knn", "calibrate", "train", "cluster", "probe", "predict", "segment",
          "evaluate", "figures", "segment_images", "tables", "download", "checkpoint"}


def package_imports(path: Path) -> set[str]:
    """Modules of the package that `path` imports (at any level of the file, also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stego_steps":
            if node.module == "stego_steps":
                found |= {alias.name for alias in node.names}
            else:
                found.add(_module_name(node.module))
        elif isinstance(node, ast.Import):
            found |= {_module_name(a.name) for a in node.names if a.name.startswith("stego_steps.")}
    return found


def _module_name(dotted: str) -> str:
    """`stego_steps.x.y` → `x`; a stage `stego_steps.stages.y` → `y`."""
    parts = dotted.split(".")
    return parts[2] if parts[1] == "stages" and len(parts) > 2 else parts[1]


def modules() -> list[Path]:
    """The package's modules, the stages under stages/ among them (during the move, at either place)."""
    return [p for p in (*PACKAGE.glob("*.py"), *PACKAGE.glob("stages/*.py")) if p.stem != "__init__"]


def graph() -> dict[str, set[str]]:
    return {p.stem: package_imports(p) for p in modules()}


def test_the_stages_are_the_modules_with_a_main():
    with_main = {p.stem for p in modules()
                 if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(p.read_text()).body)}
    assert with_main == STAGES


def test_no_stage_imports_another_stage():
    imports = graph()
    crossings = {(m, i) for m, deps in imports.items() if m in STAGES for i in deps & STAGES}
    assert crossings == set()


def test_no_library_module_imports_a_stage():
    imports = graph()
    assert {(m, i) for m, deps in imports.items() if m not in STAGES for i in deps & STAGES} == set()


def test_the_graph_parser_sees_every_import_form(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("from stego_steps import a, b as c\nfrom stego_steps.d import e\nimport stego_steps.f\n"
                    "def g():\n    from stego_steps.h import i\n")
    assert package_imports(path) == {"a", "b", "d", "f", "h"}


def test_no_module_shadows_the_standard_library():
    import sys

    assert {p.stem for p in PACKAGE.glob("*.py")} & set(sys.stdlib_module_names) == set()


def test_stages_without_a_model_start_without_torch():
    # Importing torch takes seconds per job; these stages read stores and predictions only.
    import subprocess
    import sys

    for stage in ("prepare", "evaluate"):
        module = f"stages.{stage}" if (PACKAGE / "stages" / f"{stage}.py").exists() else stage
        code = f"import sys, stego_steps.{module}; assert 'torch' not in sys.modules, '{stage} imports torch'"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
