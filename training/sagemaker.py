"""The SageMaker container contracts, for code that must run the same on AWS and on one machine.

Training container (what ``CreateTrainingJob`` sets up before it runs the image's ``train`` command)::

    <root>/input/config/hyperparameters.json    {"name": "value", ...}  every value a string
    <root>/input/config/inputdataconfig.json     the channels the job was given
    <root>/input/config/resourceconfig.json      hosts (unused: one host)
    <root>/input/data/<channel>/                 one directory per channel (SM_CHANNEL_<NAME> overrides)
    <root>/model/                                SM_MODEL_DIR: tarred to <S3OutputPath>/<job>/output/model.tar.gz
    <root>/output/data/                          SM_OUTPUT_DATA_DIR: tarred to .../output/output.tar.gz
    <root>/output/failure                        the job's FailureReason when the script fails

``<root>`` is ``/opt/ml`` unless ``SM_ROOT`` (or an explicit ``root``) says otherwise, so a local run points
it at a temporary directory. The ``SM_*`` variables win over the root when they are set (script mode sets
them; a bring-your-own image gets only the files).

Hyperparameter values arrive as strings. The SageMaker Python SDK JSON-encodes them (``"\\"scratch\\""``,
``"0.001"``) while ``boto3``/Airflow callers pass plain strings (``"scratch"``); both decode to the same value
here. Keys starting with ``sagemaker_`` or ``_`` are the platform's own and are ignored.
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/opt/ml"
FAILURE_REASON_LIMIT = 1024  # SageMaker's FailureReason is at most 1024 characters


class ContractError(RuntimeError):
    """The job's inputs break the contract (missing channel, bad hyperparameter): a client error."""


@dataclass(frozen=True)
class TrainingEnv:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "TrainingEnv":
        return cls(Path(root or os.environ.get("SM_ROOT") or DEFAULT_ROOT))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters_path(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def model_dir(self) -> Path:
        return Path(os.environ.get("SM_MODEL_DIR") or self.root / "model")

    @property
    def output_data_dir(self) -> Path:
        return Path(os.environ.get("SM_OUTPUT_DATA_DIR") or self.root / "output" / "data")

    @property
    def failure_path(self) -> Path:
        return self.root / "output" / "failure"

    def channel(self, name: str) -> Path:
        env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
        return Path(env) if env else self.root / "input" / "data" / name

    def input_data_config(self) -> dict:
        path = self.config_dir / "inputdataconfig.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def raw_hyperparameters(self) -> dict[str, str]:
        path = self.hyperparameters_path
        if not path.is_file():
            return {}
        try:
            raw = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as err:
            raise ContractError(f"{path} is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ContractError(f"{path} must hold a JSON object, not {type(raw).__name__}")
        return {str(k): v for k, v in raw.items()}

    def write_failure(self, reason: str) -> None:
        self.failure_path.parent.mkdir(parents=True, exist_ok=True)
        self.failure_path.write_text(reason[:FAILURE_REASON_LIMIT])

    def clear_failure(self) -> None:
        self.failure_path.unlink(missing_ok=True)


def decode_value(value: Any) -> Any:
    """One hyperparameter value as its caller meant it: ``'"abc"'`` -> ``'abc'``, ``'0.1'`` stays a string
    for the typed model to convert, ``'true'`` likewise. Only JSON-quoted strings are unwrapped."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def user_hyperparameters(raw: dict[str, Any]) -> dict[str, Any]:
    """Drop the platform's own keys (``sagemaker_program``, ``_tuning_objective_metric``, ...); decode the rest."""
    return {k: decode_value(v) for k, v in raw.items() if not (k.startswith("sagemaker_") or k.startswith("_"))}


def _within(base: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Unpack a (gzipped) tarball, refusing members that would land outside ``dest`` or are not plain files/dirs."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()) or not _within(dest, dest / m.name):
                raise ContractError(f"{archive}: refusing unsafe archive member {m.name!r}")
        tar.extractall(dest, members=members, filter="data")
    return dest


def make_tar(src: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """``model.tar.gz`` as SageMaker builds it: the directory's contents at the archive root."""
    src, archive = Path(src), Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            if path.resolve() == archive.resolve():
                continue
            tar.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return archive
