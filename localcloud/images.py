"""Which local command stands in for which container image.

On AWS a training job runs its ``TrainingImage`` and an endpoint runs its model's ``Image``. Locally, each
image URI maps to the commands that image would run, as argv lists::

    {
      "images": [
        {
          "match": "tlpipe-sagemaker",
          "train": ["{python}", "-m", "training.finetune"],
          "serve": ["{python}", "-m", "training.serve", "--model-dir", "{model_dir}", "--host", "127.0.0.1",
                    "--port", "{port}"],
          "env": {"EXTRA": "value"}
        }
      ]
    }

A training job or model runs only the command its entry names. A request that would change it is refused with
a ValidationException unless the entry's ``allow`` list names the field: ``ContainerEntrypoint`` and
``ContainerArguments`` (training jobs), ``CommandEnvironment`` (``Environment`` variables that change what a
process runs, such as ``LD_PRELOAD``, ``PYTHONPATH``, ``PYTHONSTARTUP``, ``PATH`` or ``BASH_ENV``). Other
environment variables and hyperparameters pass as on SageMaker::

    {"match": "my-debug-image", "train": [...], "allow": ["ContainerEntrypoint", "ContainerArguments"]}

``match`` is a shell-style glob compared with the whole image URI and with its repository name (the last
path component without tag or digest), so ``tlpipe-sagemaker`` matches
``123456789012.dkr.ecr.us-east-1.amazonaws.com/tlpipe-sagemaker:1.4``. Entries are tried in order; the
built-in entries come last: the project's image (``tlpipe-sagemaker``: ``training.finetune`` /
``training.serve``) and SageMaker's TensorFlow Serving image (``tensorflow-inference``: ``training.serve``,
which runs the artifact's TFS handlers). Placeholders: ``{python}`` (the interpreter running
localcloud), ``{project}`` (the repository root), ``{root}`` (the job's ``/opt/ml`` stand-in), ``{model_dir}``
and ``{port}`` (serve only).

The map comes from ``--images FILE`` or the ``LOCALCLOUD_IMAGES`` environment variable (a file path or the
JSON text itself).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ALLOWABLE = ("ContainerEntrypoint", "ContainerArguments", "CommandEnvironment")
# Variables through which a caller could make the interpreter, the dynamic loader or a shell run other code.
COMMAND_ENVIRONMENT = re.compile(
    r"^(LD_\w*|DYLD_\w*|PYTHON(?!UNBUFFERED$|HASHSEED$|IOENCODING$)\w*|PERL\w*|RUBY\w*|NODE_OPTIONS|"
    r"JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|BASH_ENV|ENV|BASH_FUNC_.*|SHELLOPTS|BASHOPTS|PS4|IFS|PATH|GCONV_PATH|"
    r"HOSTALIASES|OPENSSL_CONF|OPENSSL_ENGINES|TF_\w*PLUGIN\w*|HOROVOD_\w*COMMAND\w*)$",
    re.IGNORECASE,
)

# training.serve on loopback: the command both built-in images serve with.
SERVE_ARGV = [
    "{python}",
    "-m",
    "training.serve",
    "--model-dir",
    "{model_dir}",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
]

DEFAULT_ENTRIES = [
    {"match": "tlpipe-sagemaker", "train": ["{python}", "-m", "training.finetune"], "serve": SERVE_ARGV, "env": {}},
    {
        # The managed TensorFlow Serving container: the fine-tuned artifact is built for it, and
        # training.serve runs the artifact's own code/inference.py handlers the way it does.
        "match": "tensorflow-inference",
        "serve": SERVE_ARGV,
        "env": {},
    },
]


@dataclass(frozen=True)
class ImageCommands:
    image: str
    train: list[str] | None
    serve: list[str] | None
    env: dict[str, str] = field(default_factory=dict)
    allow: frozenset[str] = frozenset()

    def refusal(self, fields: dict, environment: dict | None) -> str | None:
        """Why a request may not run on this image (None: it may): a field or variable that changes the command
        the map names, unless the entry allows it."""
        for name in ("ContainerEntrypoint", "ContainerArguments"):
            if fields.get(name) and name not in self.allow:
                return (
                    f"{name} is not accepted for image '{self.image}': localcloud runs only the command its "
                    f'image map names (allow it with "allow": ["{name}"] in that entry)'
                )
        if "CommandEnvironment" not in self.allow:
            risky = sorted(k for k in (environment or {}) if COMMAND_ENVIRONMENT.match(str(k)))
            if risky:
                return (
                    f"Environment variable(s) {', '.join(risky)} would change the command of image "
                    f"'{self.image}' and are not accepted (allow them with \"allow\": "
                    f'["CommandEnvironment"] in its image map entry)'
                )
        return None

    def train_argv(self, root: str) -> list[str]:
        return _render(self.train or [], root=root)

    def serve_argv(self, root: str, model_dir: str, port: int) -> list[str]:
        return _render(self.serve or [], root=root, model_dir=model_dir, port=str(port))

    def render_env(self, **values: str) -> dict[str, str]:
        return {k: _fill(v, values) for k, v in self.env.items()}


def _fill(text: str, values: dict[str, str]) -> str:
    base = {"python": sys.executable, "project": str(PROJECT_ROOT)}
    base.update(values)
    for key, value in base.items():
        text = text.replace("{" + key + "}", value)
    return text


def _render(argv: list[str], **values: str) -> list[str]:
    return [_fill(str(a), values) for a in argv]


def repository_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


class ImageMap:
    def __init__(self, entries: list[dict]):
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
                raise ValueError(f"image map entry needs a 'match' string: {entry!r}")
            for key in ("train", "serve"):
                if key in entry and not (
                    isinstance(entry[key], list) and entry[key] and all(isinstance(a, str) for a in entry[key])
                ):
                    raise ValueError(f"image map entry {entry['match']!r}: {key!r} must be a non-empty argv list")
            unknown = set(entry.get("allow") or ()) - set(ALLOWABLE)
            if unknown:
                raise ValueError(
                    f"image map entry {entry['match']!r}: 'allow' takes {', '.join(ALLOWABLE)}, "
                    f"not {', '.join(sorted(unknown))}"
                )
        self.entries = [*entries, *DEFAULT_ENTRIES]

    @classmethod
    def load(cls, source: str | None = None) -> "ImageMap":
        """From a file path or JSON text; ``None`` reads ``LOCALCLOUD_IMAGES`` (unset: built-in entry only)."""
        source = source if source is not None else os.environ.get("LOCALCLOUD_IMAGES")
        if not source:
            return cls([])
        text = source if source.lstrip().startswith("{") else Path(source).read_text()
        data = json.loads(text)
        entries = data.get("images", []) if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the image map must be a JSON object with an 'images' list")
        return cls(entries)

    def resolve(self, image: str) -> ImageCommands | None:
        repo = repository_name(image)
        for entry in self.entries:
            pattern = entry["match"]
            if fnmatch.fnmatchcase(image, pattern) or fnmatch.fnmatchcase(repo, pattern):
                return ImageCommands(
                    image=image,
                    train=entry.get("train"),
                    serve=entry.get("serve"),
                    env={str(k): str(v) for k, v in (entry.get("env") or {}).items()},
                    allow=frozenset(entry.get("allow") or ()),
                )
        return None
