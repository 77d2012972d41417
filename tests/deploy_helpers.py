"""Helpers for the deployment-artifact tests: a Dockerfile reader, .dockerignore matching, tool lookup.

from tests.deploy_helpers import Dockerfile, dockerignore_excludes, venv_tool

df = Dockerfile.load("docker/training.Dockerfile")
df.stages["runtime"].instructions        # [Instruction(cmd="RUN", value="apt-get …", line=12), …]
df.final.user                            # "1000:1000"
df.resolve("nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU_VERSION}")
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def venv_tool(name: str) -> Path:
    """An executable installed into the project's virtual environment (hadolint, docker-compose)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed next to {sys.executable}; run `make setup`")
    return path


@dataclass
class Instruction:
    cmd: str
    value: str
    line: int

    def flags(self) -> dict[str, str]:
        """``--from=build --chown=1000:1000 …`` of COPY/ADD as a dict."""
        out = {}
        for tok in self.value.split():
            if not tok.startswith("--"):
                break
            key, _, val = tok[2:].partition("=")
            out[key] = val
        return out

    def args(self) -> list[str]:
        """COPY/ADD/EXPOSE operands without flags (JSON or shell form)."""
        text = self.value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [t for t in shlex.split(text) if not t.startswith("--")]

    def exec_form(self) -> list[str] | None:
        text = self.value.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def runs(self) -> list[str]:
        return [i.value for i in self.all("RUN")]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for tok in shlex.split(ins.value):
                key, eq, val = tok.partition("=")
                if eq:
                    out[key] = val
        return out

    @property
    def user(self) -> str | None:
        users = self.all("USER")
        return users[-1].value.strip() if users else None


class Dockerfile:
    def __init__(self, path: Path, instructions: list[Instruction]):
        self.path = path
        self.instructions = instructions
        self.global_args: dict[str, str] = {}
        self.stages: dict[str, Stage] = {}
        self.order: list[Stage] = []
        stage = None
        for ins in instructions:
            if ins.cmd == "FROM":
                parts = ins.value.split()
                parts = [p for p in parts if not p.startswith("--platform")]
                base = parts[0]
                name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(self.order))
                stage = Stage(name=name, base=base)
                self.stages[name] = stage
                self.order.append(stage)
            elif stage is None:
                if ins.cmd == "ARG":
                    key, _, default = ins.value.partition("=")
                    self.global_args[key.strip()] = default.strip().strip('"')
            else:
                stage.instructions.append(ins)

    @classmethod
    def load(cls, path: str | Path) -> "Dockerfile":
        path = ROOT / path
        return cls(path, parse_instructions(path.read_text()))

    @property
    def final(self) -> Stage:
        return self.order[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        args = dict(self.global_args)
        for ins in stage.all("ARG"):
            key, eq, default = ins.value.partition("=")
            if eq:
                args[key.strip()] = default.strip().strip('"')
        return args

    def resolve(self, text: str, stage: Stage | None = None) -> str:
        """Substitute ``${ARG}`` / ``$ARG`` with the ARG defaults (global, then the stage's)."""
        args = self.stage_args(stage) if stage else self.global_args

        def sub(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            return args.get(name, match.group(0))

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, text)

    def base_image(self, stage: Stage) -> str:
        """The stage's FROM, resolved through earlier stages' names to an external image reference."""
        base = self.resolve(stage.base)
        while base in self.stages:
            base = self.resolve(self.stages[base].base)
        return base


def parse_instructions(text: str) -> list[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined, parser directives ignored."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped by Docker too
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1])
            continue
        buf.append(stripped)
        logical = " ".join(part.strip() for part in buf if part.strip())
        buf = []
        cmd, _, value = logical.partition(" ")
        out.append(Instruction(cmd=cmd.upper(), value=value.strip(), line=start))
    if buf:
        raise ValueError("Dockerfile ends inside a continued line")
    return out


# -- .dockerignore ------------------------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + "$")


def read_dockerignore(path: Path = ROOT / ".dockerignore") -> list[tuple[bool, re.Pattern, str]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip().lstrip("/").rstrip("/")
        rules.append((negate, _pattern_regex(pat), line))
    return rules


def dockerignore_excludes(relpath: str, rules=None) -> bool:
    """Whether ``relpath`` (or a directory above it) is left out of the build context; the last match wins."""
    rules = read_dockerignore() if rules is None else rules
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negate, regex, _ in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


# -- sshd_config --------------------------------------------------------------------------------------------
def read_ssh_config(path: Path) -> dict[str, list[str]]:
    """``Keyword value`` lines (keywords lower-cased; repeated keywords collected in order)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        out.setdefault(key.lower(), []).append(value.strip())
    return out


# -- kustomize (the subset deploy/k8s uses) ----------------------------------------------------------------
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "labels", "patches", "namespace"}


def kustomize(path: str | Path) -> list[dict]:
    """Render a kustomization like ``kubectl kustomize``: resources (files and directories), labels without
    selectors, namespace, and JSON 6902 patches selected by kind and name. Any other field is an error, so a
    manifest never relies on a feature this renderer would silently skip."""
    import jsonpatch
    import yaml

    folder = ROOT / path
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}, which kustomize() does not render")
    if spec.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or spec.get("kind") != "Kustomization":
        raise ValueError(f"{folder}/kustomization.yaml is not a kustomize.config.k8s.io/v1beta1 Kustomization")
    objects: list[dict] = []
    for res in spec.get("resources", []):
        target = (folder / res).resolve()
        if target.is_dir():
            objects += kustomize(target.relative_to(ROOT))
        else:
            objects += [o for o in yaml.safe_load_all(target.read_text()) if o]
    for label in spec.get("labels", []):
        if label.get("includeSelectors"):
            raise ValueError("labels with includeSelectors are not rendered by kustomize()")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    for patch in spec.get("patches", []):
        selector = patch["target"]
        ops = yaml.safe_load(patch["patch"])
        matched = [
            o
            for o in objects
            if o["kind"] == selector.get("kind", o["kind"])
            and o["metadata"]["name"] == selector.get("name", o["metadata"]["name"])
        ]
        if not matched:
            raise ValueError(f"patch target {selector} matches no object")
        for obj in matched:
            objects[objects.index(obj)] = jsonpatch.apply_patch(obj, ops)
    return objects
