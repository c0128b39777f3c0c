"""The folder tree is the pipeline: no stage imports a later one, and every stage package says what it does."""

from __future__ import annotations

import ast
from pathlib import Path

import hywia

PACKAGE = Path(hywia.__file__).parent
# The stages in pipeline order; a module may import its own stage and earlier ones only.
STAGES = ["errors", "models", "calibration", "importance", "allocate", "reconstruct", "report", "pipeline",
          "recover", "evaluate", "cli"]


def stage_of(module: str) -> str | None:
    """``hywia.importance.hywia.method`` -> ``importance``; the package root and ``__main__`` have none."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def imported_modules(path: Path, module: str) -> list[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "hywia" or target.startswith("hywia."):
                found.append(target)
                found += [f"{target}.{alias.name}" for alias in node.names]  # "from . import hywia" style
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("hywia")]
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_module_belongs_to_a_stage():
    loose = [name for _, name in modules() if stage_of(name) is None and name not in ("hywia", "hywia.__main__")]
    assert not loose, f"modules outside the pipeline stages {STAGES}: {loose}"


def test_no_stage_imports_a_later_stage():
    violations = []
    for path, name in modules():
        own = stage_of(name)
        if own is None:
            continue
        for target in imported_modules(path, name):
            other = stage_of(target)
            if other is not None and STAGES.index(other) > STAGES.index(own):
                violations.append(f"{name} ({own}) imports {target} ({other})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_a_backward_import(tmp_path):
    """The import scan must find relative imports (else the test above could not fail)."""
    source = tmp_path / "method.py"
    source.write_text("from ...allocate import top_units\nfrom ..registry import score\n")
    found = imported_modules(source, "hywia.importance.hywia.method")
    assert "hywia.allocate" in found and "hywia.importance.registry" in found


def test_stage_packages_say_what_they_take_and_give():
    for path, name in modules():
        if path.name == "__init__.py" and name != "hywia":
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc and len(doc.split()) >= 12, f"{name}/__init__.py needs a docstring saying what the stage takes and gives"
