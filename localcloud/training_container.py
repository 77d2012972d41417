"""The training container's side of a job, as SageMaker lays it out: channels downloaded into ``/opt/ml/input/data``,
the ``input/config`` files, the ``SM_*`` environment, metrics scanned from the log, and the artifacts uploaded
from ``/opt/ml/model`` and ``/opt/ml/output``."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

from . import procs

try:
    import regex as _re
except ImportError:  # pragma: no cover
    import re as _re

FAILURE_REASON_LIMIT = 1024


class JobFailure(Exception):
    """The job fails with this FailureReason."""


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def job_paths(job_dir: Path) -> dict[str, Path]:
    """Where a job's files live: its ``/opt/ml`` stand-in, the container's log and the runner's exit status."""
    ml = job_dir / "ml"
    return {
        "job": job_dir,
        "ml": ml,
        "config": ml / "input" / "config",
        "data": ml / "input" / "data",
        "model": ml / "model",
        "output": ml / "output",
        "output_data": ml / "output" / "data",
        "checkpoints": ml / "checkpoints",
        "log": job_dir / "container.log",
        "exit": job_dir / "exit-code",
    }


def reset(paths: dict[str, Path]) -> None:
    """An empty ``/opt/ml`` for a (re)start: nothing of an earlier run is left to be mistaken for this one's."""
    if paths["ml"].exists():
        shutil.rmtree(paths["ml"])
    paths["exit"].unlink(missing_ok=True)
    for key in ("config", "data", "model", "output_data", "checkpoints"):
        paths[key].mkdir(parents=True, exist_ok=True)
    (paths["output"] / "intermediate").mkdir(parents=True, exist_ok=True)


def command(images, doc: dict, paths: dict[str, Path]):
    """(image map entry, argv) of the job's container: exactly what the map names for its TrainingImage, unless
    the entry allows ContainerEntrypoint/ContainerArguments (checked again: the map may have changed)."""
    image = doc["AlgorithmSpecification"]["TrainingImage"]
    commands = images.resolve(image)
    if commands is None or not commands.train:
        raise JobFailure(f"ClientError: localcloud has no training command for image '{image}'")
    spec = doc["AlgorithmSpecification"]
    refusal = commands.refusal(spec, doc.get("Environment"))
    if refusal:
        raise JobFailure(f"ClientError: {refusal}")
    argv = commands.train_argv(root=str(paths["ml"]))
    if spec.get("ContainerEntrypoint"):
        argv = list(spec["ContainerEntrypoint"])
    if spec.get("ContainerArguments"):
        argv = argv + list(spec["ContainerArguments"])
    return commands, argv


def download_prefix(s3, uri: str, dest: Path, required: bool, doc: dict) -> None:
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3(uri)
    dest.mkdir(parents=True, exist_ok=True)
    found = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                rel = relative_key(prefix, key)
                target = (dest / rel).resolve()
                if (
                    not rel
                    or not target.is_relative_to(dest.resolve())
                    or any(part in ("", ".", "..") for part in rel.split("/"))
                ):
                    raise JobFailure(
                        f"ClientError: Data download failed: object key '{key}' under {uri} "
                        f"would be written outside the channel directory"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))
                found += 1
    except ClientError as err:
        if not required and err.response["Error"]["Code"] in ("NoSuchBucket", "404"):
            return
        raise JobFailure(f"ClientError: Data download failed: cannot read {uri}: {err}") from None
    if required and not found:
        raise JobFailure(
            f'ClientError: No S3 objects found under S3 URL "{uri}" given in input data source. Please ensure '
            f"that the bucket exists in the selected region ({doc['_region']}), that objects exist under that "
            f'S3 prefix, and that the role "{doc["RoleArn"]}" has "s3:ListBucket" permissions on bucket '
            f'"{bucket}".'
        )


def write_config(doc: dict, paths: dict[str, Path]) -> None:
    config = paths["config"]
    instance_type = (doc.get("ResourceConfig") or {}).get("InstanceType", "ml.m5.large")
    channels = {}
    for channel in doc.get("InputDataConfig") or []:
        entry = {
            "TrainingInputMode": channel.get("InputMode") or doc["AlgorithmSpecification"]["TrainingInputMode"],
            "S3DistributionType": channel["DataSource"]["S3DataSource"].get(
                "S3DataDistributionType", "FullyReplicated"
            ),
            "RecordWrapperType": channel.get("RecordWrapperType", "None"),
        }
        if channel.get("ContentType"):
            entry["ContentType"] = channel["ContentType"]
        channels[channel["ChannelName"]] = entry
    resource = {
        "current_host": "algo-1",
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": ["algo-1"],
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": ["algo-1"]}
        ],
        "network_interface_name": "eth0",
    }
    files = {
        "hyperparameters.json": doc.get("HyperParameters") or {},
        "inputdataconfig.json": channels,
        "resourceconfig.json": resource,
        "trainingjobconfig.json": {k: v for k, v in doc.items() if not k.startswith("_")},
    }
    if doc.get("CheckpointConfig"):
        files["checkpointconfig.json"] = {
            "LocalPath": str(paths["checkpoints"]),
            "S3Uri": doc["CheckpointConfig"]["S3Uri"],
        }
    for filename, content in files.items():
        (config / filename).write_text(json.dumps(content, indent=2))


def environment(doc: dict, paths: dict[str, Path], commands) -> dict[str, str]:
    ml = paths["ml"]
    hps = doc.get("HyperParameters") or {}
    channel_names = [c["ChannelName"] for c in doc.get("InputDataConfig") or []]
    instance_type = (doc.get("ResourceConfig") or {}).get("InstanceType", "ml.m5.large")
    resource = json.loads((paths["config"] / "resourceconfig.json").read_text())
    input_config = json.loads((paths["config"] / "inputdataconfig.json").read_text())
    channel_dirs = {c: str(paths["data"] / c) for c in channel_names}
    sm = {
        # The /opt/ml stand-in under both names in use: training.sagemaker's and the training toolkit's.
        "SM_ROOT": str(ml),
        "SAGEMAKER_BASE_DIR": str(ml),
        "SM_MODEL_DIR": str(paths["model"]),
        "SM_INPUT_DIR": str(ml / "input"),
        "SM_INPUT_CONFIG_DIR": str(paths["config"]),
        "SM_OUTPUT_DIR": str(paths["output"]),
        "SM_OUTPUT_DATA_DIR": str(paths["output_data"]),
        "SM_OUTPUT_INTERMEDIATE_DIR": str(paths["output"] / "intermediate"),
        "SM_CHANNELS": json.dumps(channel_names),
        "SM_HPS": json.dumps(hps),
        "SM_CURRENT_HOST": "algo-1",
        "SM_CURRENT_INSTANCE_TYPE": instance_type,
        "SM_HOSTS": json.dumps(["algo-1"]),
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": "0",
        "SM_NETWORK_INTERFACE_NAME": "eth0",
        "SM_RESOURCE_CONFIG": json.dumps(resource),
        "SM_INPUT_DATA_CONFIG": json.dumps(input_config),
        "SM_LOG_LEVEL": "20",
        "SM_TRAINING_ENV": json.dumps(
            {
                "job_name": doc["TrainingJobName"],
                "current_host": "algo-1",
                "hosts": ["algo-1"],
                "hyperparameters": hps,
                "channel_input_dirs": channel_dirs,
                "input_data_config": input_config,
                "input_dir": str(ml / "input"),
                "input_config_dir": str(paths["config"]),
                "model_dir": str(paths["model"]),
                "output_dir": str(paths["output"]),
                "output_data_dir": str(paths["output_data"]),
                "resource_config": resource,
                "num_cpus": os.cpu_count() or 1,
                "num_gpus": 0,
            }
        ),
        "TRAINING_JOB_NAME": doc["TrainingJobName"],
        "TRAINING_JOB_ARN": doc["TrainingJobArn"],
        "AWS_REGION": doc["_region"],
        "AWS_DEFAULT_REGION": doc["_region"],
        "PYTHONUNBUFFERED": "1",
    }
    for channel, path in channel_dirs.items():
        sm[f"SM_CHANNEL_{channel.upper()}"] = path
    for key, value in hps.items():
        sm[f"SM_HP_{key.upper()}"] = str(value)
    env = procs.base_environment()
    env.update(commands.render_env(root=str(ml)))
    env.update(sm)
    env.update({k: str(v) for k, v in (doc.get("Environment") or {}).items()})
    return env


def failure_reason(paths: dict[str, Path], code: int | None) -> str:
    failure = paths["output"] / "failure"
    if failure.exists():
        text = failure.read_text(errors="replace").strip()
        if text:
            return ("AlgorithmError: " + text)[:FAILURE_REASON_LIMIT]
    if code is None:
        return "AlgorithmError: the training process was killed. See job logs for more information."
    return f"AlgorithmError: See job logs for more information, exit code: {code}"


def final_metrics(doc: dict) -> list[dict]:
    latest = doc.get("_metrics") or {}
    out = []
    for definition in doc["AlgorithmSpecification"].get("MetricDefinitions") or []:
        entry = latest.get(definition["Name"])
        if entry is not None:
            out.append({"MetricName": definition["Name"], "Value": entry[0], "Timestamp": entry[1]})
    return out


def model_artifacts_uri(body: dict) -> str:
    base = body["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    name = body["TrainingJobName"]
    if (body["OutputDataConfig"].get("CompressionType") or "GZIP") == "NONE":
        return f"{base}/{name}/output/model/"
    return f"{base}/{name}/output/model.tar.gz"


def output_key(doc: dict, filename: str) -> tuple[str, str]:
    bucket, prefix = split_s3(doc["OutputDataConfig"]["S3OutputPath"])
    prefix = prefix.strip("/")
    key = f"{doc['TrainingJobName']}/output/{filename}"
    return bucket, f"{prefix}/{key}" if prefix else key


def upload_outputs(s3, doc: dict, paths: dict[str, Path], model: bool) -> None:
    """What SageMaker uploads when the container exits: model.tar.gz (when it succeeded or was stopped),
    output.tar.gz, and the checkpoints."""
    try:
        if model:
            upload_model(s3, doc, paths)
        upload_tar(s3, doc, paths["output_data"], paths["job"] / "output.tar.gz", "output.tar.gz")
        if doc.get("CheckpointConfig"):
            upload_dir(s3, paths["checkpoints"], doc["CheckpointConfig"]["S3Uri"])
    except JobFailure:
        raise
    except Exception as err:
        raise JobFailure(f"InternalServerError: uploading the training output failed: {err}") from None


def upload_model(s3, doc: dict, paths: dict[str, Path]) -> None:
    if (doc["OutputDataConfig"].get("CompressionType") or "GZIP") == "NONE":
        upload_dir(s3, paths["model"], doc["ModelArtifacts"]["S3ModelArtifacts"])
    else:
        upload_tar(s3, doc, paths["model"], paths["job"] / "model.tar.gz", "model.tar.gz")


def upload_tar(s3, doc: dict, source: Path, tarball: Path, filename: str) -> None:
    _tar_dir(source, tarball)
    bucket, key = output_key(doc, filename)
    put_file(s3, tarball, bucket, key)


def upload_dir(s3, source: Path, uri: str) -> None:
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    for path in sorted(source.rglob("*")) if source.exists() else []:
        if path.is_file():
            put_file(s3, path, bucket, prefix + path.relative_to(source).as_posix())


def put_file(s3, path: Path, bucket: str, key: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.upload_file(str(path), bucket, key)
    except ClientError as err:
        raise JobFailure(f"ClientError: cannot write s3://{bucket}/{key}: {err}") from None
    except Exception as err:  # boto3's transfer manager wraps ClientError in S3UploadFailedError
        raise JobFailure(f"ClientError: cannot write s3://{bucket}/{key}: {err}") from None


def relative_key(prefix: str, key: str) -> str:
    """Where SageMaker puts ``key`` inside the channel directory for an S3Prefix ``prefix``."""
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    if not prefix or prefix.endswith("/"):
        return key[len(prefix) :]
    rest = key[len(prefix) :]
    if rest.startswith("/"):
        return rest[1:]
    # The prefix ends inside a name: keep the path from the prefix's directory on.
    base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    return key[len(base) :]


def _tar_dir(source: Path, target: Path) -> None:
    with tarfile.open(target, "w:gz") as tar:
        for entry in sorted(source.iterdir()) if source.exists() else []:
            tar.add(entry, arcname=entry.name)


class MetricScanner:
    """Applies MetricDefinitions regexes to log lines; the first group of the last match is the value."""

    def __init__(self, definitions: list[dict]):
        self.definitions = [(d["Name"], _re.compile(d["Regex"])) for d in definitions]
        self.latest: dict[str, list[float]] = {}

    def feed(self, lines: list[str]) -> None:
        now = time.time()
        for line in lines:
            for name, pattern in self.definitions:
                match = pattern.search(line)
                if not match:
                    continue
                text = match.group(1) if match.groups() else match.group(0)
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                self.latest[name] = [value, now]


def transition(doc: dict, status: str, message: str, now: float) -> None:
    """Record a SecondaryStatus transition (closing the previous one), as DescribeTrainingJob lists them."""
    transitions = doc.setdefault("SecondaryStatusTransitions", [])
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = now
    entry = {"Status": status, "StartTime": now, "StatusMessage": message}
    if status in ("Completed", "Failed", "Stopped"):
        entry["EndTime"] = now
    transitions.append(entry)
    doc["SecondaryStatus"] = status
    doc["LastModifiedTime"] = now
