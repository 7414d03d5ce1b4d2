"""The architecture holds: imports point down the layers of ``.importlinter`` (checked by import-linter itself), every
module of recops is in a layer, and every DVC stage lists among its deps the recops modules it imports, so that
editing one re-runs the stages it can change and ``dvc repro`` never calls stale outputs up to date."""

from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    """lint-imports on the project's .importlinter: the wiring layers (CLI, flows, DVC stages) over the library,
    recops' own layers, no import cycle inside any package of recops, MLflow imported by recops.registry only."""
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "5 kept" in done.stdout, done.stdout[-3000:]


def _layers() -> list[set[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    rows = [row.strip() for row in config["importlinter:contract:layers"]["layers"].splitlines() if row.strip()]
    return [set(re.split(r"\s*[|:]\s*", row)) for row in rows]


def test_every_module_of_recops_is_in_a_layer():
    """A module left out of the layers contract would be free to import anything: adding one means placing it."""
    layered = set().union(*_layers())
    modules = {p.stem for p in (ROOT / "recops").glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (ROOT / "recops").glob("*/__init__.py")}
    assert sorted((modules | packages) - layered) == []
    assert sorted(layered - (modules | packages)) == []  # nor a layer naming a module that is gone


# --- dvc.yaml deps -----------------------------------------------------------------------------------------------


def _imported_by(node: ast.AST, known: set[str]) -> set[str]:
    """The recops modules an AST node imports (``from recops.x import y`` counts ``recops.x.y`` when a module)."""
    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.split(".")[0] == "recops":
            found.add(sub.module)
            found.update(f"{sub.module}.{alias.name}" for alias in sub.names if f"{sub.module}.{alias.name}" in known)
        elif isinstance(sub, ast.Import):
            found.update(alias.name for alias in sub.names if alias.name.split(".")[0] == "recops")
    return found


def _stage_imports(stage: str, known: set[str]) -> set[str]:
    """What ``recops.steps`` imports for ``stage``: its module-level imports and those inside the stage function
    and the steps functions it calls (transitively), with the wrapper every stage runs in (``STAGES``)."""
    tree = ast.parse((ROOT / "recops" / "steps.py").read_text(encoding="utf-8"))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    found = set().union(*(_imported_by(node, known) for node in tree.body
                          if isinstance(node, (ast.Import, ast.ImportFrom))))
    todo, seen = [stage, "_recorded"], {stage, "_recorded"}
    while todo:
        function = functions[todo.pop()]
        found |= _imported_by(function, known)
        names = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
        for name in sorted((names & functions.keys()) - seen):
            seen.add(name)
            todo.append(name)
    return found


def _with_packages(modules: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first."""
    return modules | {".".join(m.split(".")[:i]) for m in modules for i in range(1, len(m.split(".")))}


def stage_modules(graph, stage: str) -> set[str]:
    """Every recops and pipelines module ``python -m pipelines.<stage>`` can import: the import graph (imports
    inside functions included) from the stage script, where ``recops.steps`` stands for what this stage uses."""
    steps = _stage_imports(stage, set(graph.modules))
    reached, todo = set(), [f"pipelines.{stage}"]
    while todo:
        module = todo.pop()
        if module in reached:
            continue
        reached.add(module)
        imported = steps if module == "recops.steps" else graph.find_modules_directly_imported_by(module)
        todo.extend(_with_packages({m for m in imported if m.split(".")[0] in ("recops", "pipelines")}) - reached)
    return _with_packages(reached)


def module_file(graph, module: str) -> str:
    path = module.replace(".", "/")
    return f"{path}/__init__.py" if graph.find_children(module) or (ROOT / path).is_dir() else f"{path}.py"


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("recops", "pipelines", cache_dir=None)


def test_each_dvc_stage_depends_on_the_recops_modules_it_imports(graph):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    missing = {}
    for name, stage in stages.items():
        script = re.fullmatch(r"python -m pipelines\.(\w+)", stage["cmd"])
        assert script, f"stage {name}: {stage['cmd']!r} is not `python -m pipelines.<stage>`"
        files = {module_file(graph, m) for m in stage_modules(graph, script.group(1))}
        assert all((ROOT / f).is_file() for f in files), sorted(f for f in files if not (ROOT / f).is_file())
        lacking = sorted(f for f in files if not covered(f, stage.get("deps", [])))
        if lacking:
            missing[name] = lacking
    assert missing == {}, "dvc.yaml deps lack modules their stages import:\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in missing.items())


def test_the_deps_check_sees_an_import_inside_a_function(graph):
    """The check is not vacuous: the candidates stage reaches the sources through a function-local import, and a
    stage that lists only its script is reported for it."""
    files = {module_file(graph, m) for m in stage_modules(graph, "candidates")}
    assert "recops/candidates/sources.py" in files and "recops/steps.py" in files
    assert not covered("recops/candidates/sources.py", ["pipelines/candidates.py", "recops/steps.py"])
    assert covered("recops/candidates/sources.py", ["recops/candidates"])
    # a stage's own helpers count, another stage's do not: export does not import the registry
    assert not any(f.startswith("recops/registry/") for f in
                   {module_file(graph, m) for m in stage_modules(graph, "export")})
