"""Parsing the workflow imports no torch: every Snakefile parse (each dry run, each cluster job step) would
pay for it. The modules are read from the workflow's own top-level import lines."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = [ROOT / "Snakefile", ROOT / "workflow" / "Snakefile",
                  *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
# top-level lines only: an indented import runs inside a function, when (and if) it is called
IMPORT = re.compile(
    r"^(?:from\s+(stego_steps[\w.]*)\s+import\s+(\([^)]*\)|[\w ,]+?)\s*$|import\s+(stego_steps[\w.]*))", re.M
)


def workflow_modules() -> list[str]:
    modules: set[str] = set()
    for path in WORKFLOW_FILES:
        for package, names, plain in IMPORT.findall(path.read_text()):
            if plain:
                modules.add(plain)
                continue
            modules.add(package)
            # `from stego_steps import x as y`: x may be a module of the package
            for name in re.split(r"\s*,\s*", names.strip("() \n")):
                name = name.split(" as ")[0].strip()
                if name and (ROOT / package.replace(".", "/") / f"{name}.py").is_file():
                    modules.add(f"{package}.{name}")
    return sorted(modules)


def workflow_imports() -> list[str]:
    """Each top-level `import stego_steps…` / `from stego_steps… import …` of the workflow, on one line."""
    statements: list[str] = []
    for path in WORKFLOW_FILES:
        for package, names, plain in IMPORT.findall(path.read_text()):
            joined = " ".join(names.strip("()").split()).rstrip(",")
            statements.append(f"import {plain}" if plain else f"from {package} import {joined}")
    return statements


def test_the_workflow_reads_its_imports_from_its_files():
    assert {"stego_steps.experiment", "stego_steps.rule_inputs", "stego_steps.steps"} <= set(workflow_modules())


def test_importing_what_the_workflow_imports_leaves_torch_out():
    modules = workflow_modules()
    # the import lines themselves, so a name the workflow imports that is gone fails here too
    code = "import sys\n" + "".join(f"{statement}\n" for statement in workflow_imports()) + (
        "print(sorted(m for m in ('torch', 'timm', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"the workflow's imports ({', '.join(modules)}) load {out.stdout.strip()}"
