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


def test_the_top_level_requirements_txt_is_airflow_in_pinned_to_the_constraints():
    """What the Airflow image and managed Airflow install: every package of requirements/airflow.in, each at
    exactly its version in requirements/constraints.txt, nothing else; regenerating it changes nothing."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import pin_requirements

    text = (ROOT / "requirements.txt").read_text()
    assert text == pin_requirements.render(
        (ROOT / "requirements/airflow.in").read_text(), (ROOT / "requirements/constraints.txt").read_text()
    ), "requirements.txt is out of date: run `make lock`"
    constraints = pin_requirements.pins((ROOT / "requirements/constraints.txt").read_text())
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    wanted = [_name(r) for r in (ROOT / "requirements/airflow.in").read_text().splitlines() if r.split("#")[0].strip()]
    assert [_name(line) for line in lines] == wanted
    for line in lines:
        name, _, version = line.partition("==")
        assert constraints[pin_requirements.canonical(name.split("[")[0])] == version, line
    # What the Airflow side imports at run time is there: the metadata database's drivers among them.
    assert {"apache-airflow", "psycopg2-binary", "asyncpg"} <= {_name(line) for line in lines}
