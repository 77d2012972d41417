"""What the images install covers what their code imports: every third-party module the ``training`` package
imports (the training and SageMaker images ship it) comes from ``requirements/training.in`` or what those
packages depend on; Horovod is built by the image itself, and imports guarded by ``except ImportError`` are
optional."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILT_BY_THE_IMAGE = {"horovod"}


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def dependency_closure(requirements: list[str]) -> set[str]:
    seen, stack = set(), [_name(r) for r in requirements]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        stack += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in ``package`` (optional imports left out)."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        optional = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers
            ):
                optional |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("training", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_training_requirements_cover_the_training_package():
    lines = (ROOT / "requirements" / "training.in").read_text().splitlines()
    installed = dependency_closure([line for line in lines if line.strip() and not line.startswith("#")])
    distributions = md.packages_distributions()
    missing = {}
    for module, files in imported_modules(ROOT / "training").items():
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & (installed | BUILT_BY_THE_IMAGE):
            missing[module] = sorted(files)
    assert missing == {}, f"imported by the training package but not installed by requirements/training.in: {missing}"
