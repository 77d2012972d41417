"""Training jobs that really run.

A job goes through SageMaker's phases, each recorded in SQLite before the next begins:

``Starting`` -> ``Downloading`` (S3 channels into ``<data-dir>/jobs/<job>/ml/input/data/<channel>/`` plus the
``input/config/*.json`` files) -> ``Training`` (the command the ``TrainingImage`` maps to, with the ``SM_*``
environment the SageMaker training toolkit sets and ``SM_ROOT`` / ``SAGEMAKER_BASE_DIR`` pointing at the job's
``/opt/ml`` stand-in; its output streamed to CloudWatch Logs ``/aws/sagemaker/TrainingJobs``, stream
``<job>/algo-1-<epoch>``, and matched against the ``MetricDefinitions``) -> ``Uploading`` (``model.tar.gz``
and ``output.tar.gz`` under ``<S3OutputPath>/<job>/output/``) -> ``Completed``; or ``Failed`` with the
``FailureReason`` the command wrote to ``output/failure``; or, after StopTrainingJob or when
``MaxRuntimeInSeconds`` runs out, ``Stopping`` (SIGTERM, SIGKILL after a grace period, artifacts uploaded)
-> ``Stopped``.

Restarts: a job whose command is still running (localcloud crashed) is adopted; one whose command finished
while localcloud was down is finished from its recorded exit status; one that localcloud itself interrupted
(clean shutdown) or that was still downloading is run again from the start.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import procs
from .errors import AwsError, arn, not_found, validation
from .state import TRAINING_JOB

try:
    import regex as _re
except ImportError:  # pragma: no cover
    import re as _re

if TYPE_CHECKING:
    from .server import LocalCloud

log = logging.getLogger("localcloud.jobs")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = {"Completed", "Failed", "Stopped"}
FAILURE_REASON_LIMIT = 1024


class JobFailure(Exception):
    """The job fails with this FailureReason."""


class Interrupted(Exception):
    """localcloud is shutting down; the job resumes on the next start."""


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return bucket, key


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


class TrainingJobs:
    def __init__(self, cloud: "LocalCloud"):
        self.cloud = cloud
        self.state = cloud.state
        self.root = cloud.data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._threads: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Event] = {}
        self._procs: dict[str, object] = {}
        self._lock = threading.Lock()

    # -- API ---------------------------------------------------------------------------------------------
    def create(self, body: dict, region: str) -> str:
        name = body["TrainingJobName"]
        image = body["AlgorithmSpecification"]["TrainingImage"]
        commands = self.cloud.images.resolve(image)
        if commands is None or not commands.train:
            raise validation(
                f"localcloud has no training command for image '{image}'. Map it with --images or LOCALCLOUD_IMAGES."
            )
        refusal = commands.refusal(body["AlgorithmSpecification"], body.get("Environment"))
        if refusal:
            raise validation(refusal)
        job_arn = arn(region, "training-job", name)
        now = time.time()
        doc = {k: v for k, v in body.items() if k != "Tags"}
        doc.update(
            {
                "TrainingJobArn": job_arn,
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Starting",
                "CreationTime": now,
                "LastModifiedTime": now,
                "ModelArtifacts": {"S3ModelArtifacts": self._model_artifacts_uri(body)},
                "StoppingCondition": {"MaxRuntimeInSeconds": 86400, **(body.get("StoppingCondition") or {})},
                "SecondaryStatusTransitions": [],
                "_region": region,
                "_phase": "starting",
            }
        )
        doc.setdefault("HyperParameters", {})
        doc.setdefault("EnableNetworkIsolation", False)
        doc.setdefault("EnableInterContainerTrafficEncryption", False)
        doc.setdefault("EnableManagedSpotTraining", False)
        _transition(doc, "Starting", "Preparing the instances for training", now)
        if not self.state.insert(TRAINING_JOB, name, job_arn, now, doc):
            existing = self.state.get(TRAINING_JOB, name)
            raise AwsError(
                "ResourceInUse",
                "Training job names must be unique within an AWS account and region, and a training job with "
                f"this name already exists ({existing['TrainingJobArn'] if existing else job_arn})",
            )
        if body.get("Tags"):
            self.state.add_tags(job_arn, body["Tags"])
        self._start(name)
        return job_arn

    def stop(self, name: str) -> None:
        def change(doc: dict) -> None:
            status = doc["TrainingJobStatus"]
            if status != "InProgress":
                raise validation(f"The request was rejected because the training job is in status {status}.")
            now = time.time()
            doc["TrainingJobStatus"] = "Stopping"
            doc["_stop"] = "user"
            _transition(doc, "Stopping", "Stopping the training job", now)

        if self.state.update(TRAINING_JOB, name, change) is None:
            raise not_found()
        wake = self._wake.get(name.lower())
        if wake is not None:
            wake.set()

    def recover(self) -> None:
        """Pick up every job that was not finished when localcloud last stopped."""
        for doc in self.state.list(TRAINING_JOB):
            if doc["TrainingJobStatus"] in TERMINAL:
                continue
            self._start(doc["TrainingJobName"])

    def shutdown(self, timeout: float = 60) -> None:
        for wake in list(self._wake.values()):
            wake.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- the job thread ----------------------------------------------------------------------------------
    def _start(self, name: str) -> None:
        key = name.lower()
        with self._lock:
            if key in self._threads and self._threads[key].is_alive():
                return
            self._wake[key] = threading.Event()
            thread = threading.Thread(target=self._run, args=(name,), name=f"job-{name}", daemon=True)
            self._threads[key] = thread
        thread.start()

    def _doc(self, name: str) -> dict:
        doc = self.state.get(TRAINING_JOB, name)
        if doc is None:
            raise Interrupted()
        return doc

    def _update(self, name: str, **fields) -> dict:
        def change(doc: dict) -> None:
            doc.update(fields)

        return self.state.update(TRAINING_JOB, name, change)

    def _set_secondary(self, name: str, status: str, message: str) -> None:
        def change(doc: dict) -> None:
            if doc["TrainingJobStatus"] == "InProgress":
                _transition(doc, status, message, time.time())

        self.state.update(TRAINING_JOB, name, change)

    def _check(self, name: str) -> dict:
        if self.cloud.shutting_down.is_set():
            raise Interrupted()
        return self._doc(name)

    def _run(self, name: str) -> None:
        try:
            while True:
                doc = self._check(name)
                phase = doc["_phase"]
                if doc["TrainingJobStatus"] in TERMINAL:
                    return
                if phase == "starting":
                    if doc["TrainingJobStatus"] == "Stopping":
                        self._update(name, _phase="uploading", _exit_code=None)
                        continue
                    self._prepare(name)
                elif phase == "training":
                    self._watch(name)
                elif phase == "uploading":
                    self._finish(name)
                    return
        except Interrupted:
            log.info("training job %s interrupted; it resumes when localcloud starts again", name)
        except JobFailure as failure:
            self._fail(name, str(failure))
        except Exception as err:  # localcloud's own fault: report it on the job rather than lose it
            log.exception("training job %s: internal error", name)
            self._fail(name, f"InternalServerError: {err}")

    def _paths(self, name: str) -> dict[str, Path]:
        job_dir = self.root / name.lower()
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

    def _prepare(self, name: str) -> None:
        doc = self._doc(name)
        paths = self._paths(name)
        restarting = doc.get("TrainingStartTime") is not None
        if restarting:
            self._set_secondary(name, "Restarting", "Restarting the training job: localcloud restarted while it ran")
        if paths["ml"].exists():
            shutil.rmtree(paths["ml"])
        paths["exit"].unlink(missing_ok=True)
        for key in ("config", "data", "model", "output_data", "checkpoints"):
            paths[key].mkdir(parents=True, exist_ok=True)
        (paths["output"] / "intermediate").mkdir(parents=True, exist_ok=True)

        now = time.time()

        def begin(d: dict) -> None:
            d.setdefault("TrainingStartTime", now)
            _transition(d, "Downloading", "Downloading input data", now)

        self.state.update(TRAINING_JOB, name, begin)
        self._write_config(doc, paths)
        s3 = self.cloud.client("s3")
        for channel in doc.get("InputDataConfig") or []:
            self._check(name)
            source = channel["DataSource"]["S3DataSource"]
            self._download_prefix(s3, source["S3Uri"], paths["data"] / channel["ChannelName"], required=True, doc=doc)
        checkpoint = doc.get("CheckpointConfig")
        if checkpoint:
            self._download_prefix(s3, checkpoint["S3Uri"], paths["checkpoints"], required=False, doc=doc)

        doc = self._check(name)
        if doc["TrainingJobStatus"] == "Stopping":
            self._update(name, _phase="uploading", _exit_code=None)
            return
        commands = self.cloud.images.resolve(doc["AlgorithmSpecification"]["TrainingImage"])
        if commands is None or not commands.train:
            raise JobFailure(
                f"ClientError: localcloud has no training command for image "
                f"'{doc['AlgorithmSpecification']['TrainingImage']}'"
            )
        argv = commands.train_argv(root=str(paths["ml"]))
        spec = doc["AlgorithmSpecification"]
        refusal = commands.refusal(spec, doc.get("Environment"))  # the map may have changed since CreateTrainingJob
        if refusal:
            raise JobFailure(f"ClientError: {refusal}")
        if spec.get("ContainerEntrypoint"):
            argv = list(spec["ContainerEntrypoint"])
        if spec.get("ContainerArguments"):
            argv = argv + list(spec["ContainerArguments"])
        env = self._environment(doc, paths, commands)
        run_offset = paths["log"].stat().st_size if paths["log"].exists() else 0
        stream = doc.get("_stream") or f"{doc['TrainingJobName']}/algo-1-{int(time.time())}"
        proc = procs.spawn(
            [os.fspath(self.cloud.python), "-m", "localcloud.runner", str(paths["exit"]), "--", *argv],
            env=env,
            cwd=paths["ml"],
            log_path=paths["log"],
        )
        self._procs[name.lower()] = proc
        started = procs.start_time(proc.pid)
        now = time.time()

        def running(d: dict) -> None:
            d.update(
                {
                    "_phase": "training",
                    "_pid": proc.pid,
                    "_pstart": started,
                    "_stream": stream,
                    "_run_offset": run_offset,
                    "_log_offset": run_offset,
                    "_interrupted": False,
                    "_run_started": now,
                }
            )
            if d["TrainingJobStatus"] == "InProgress":
                _transition(d, "Training", "Training image download completed. Training in progress.", now)

        self.state.update(TRAINING_JOB, name, running)
        log.info("training job %s: started %s (pid %s)", name, argv, proc.pid)

    def _download_prefix(self, s3, uri: str, dest: Path, required: bool, doc: dict) -> None:
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
                    if not rel or not target.is_relative_to(dest.resolve()) or any(
                            part in ("", ".", "..") for part in rel.split("/")):
                        raise JobFailure(f"ClientError: Data download failed: object key '{key}' under {uri} "
                                         f"would be written outside the channel directory")
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

    def _write_config(self, doc: dict, paths: dict[str, Path]) -> None:
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

    def _environment(self, doc: dict, paths: dict[str, Path], commands) -> dict[str, str]:
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

    def _watch(self, name: str) -> None:
        doc = self._doc(name)
        paths = self._paths(name)
        proc = self._procs.get(name.lower())
        pid, started = doc["_pid"], doc["_pstart"]
        if proc is None or proc.pid != pid:
            proc = None
            if not procs.alive(pid, started):
                # The command ended while localcloud was not watching it.
                if doc.get("_interrupted") or not paths["exit"].exists():
                    if doc["TrainingJobStatus"] == "Stopping":
                        self._update(name, _phase="uploading", _exit_code=None)
                    else:
                        self._update(name, _phase="starting")
                    return
            else:
                log.info("training job %s: adopting running process %s", name, pid)
        # Metrics and the shipped offset are saved together, so an adopted job continues where it was.
        metrics = MetricScanner(doc["AlgorithmSpecification"].get("MetricDefinitions") or [])
        metrics.latest.update(doc.get("_metrics") or {})
        reader = procs.LineReader(paths["log"], doc["_log_offset"])
        stream = procs.CloudWatchStream(self.cloud.client("logs"), LOG_GROUP, doc["_stream"])
        wake = self._wake[name.lower()]
        signalled = False
        max_runtime = doc["StoppingCondition"].get("MaxRuntimeInSeconds", 86400)
        run_started = doc.get("_run_started") or time.time()
        last_saved = 0.0
        while True:
            exited = proc.poll() is not None if proc is not None else not procs.alive(pid, started)
            lines = reader.read(final=exited)
            if lines:
                metrics.feed(lines)
                try:
                    stream.put(lines)
                except Exception as err:  # the log is still on disk; keep the job going
                    log.warning("training job %s: cannot ship log lines: %s", name, err)
            if lines and (exited or time.monotonic() - last_saved > 2):
                self._update(name, _log_offset=reader.offset, _metrics=metrics.latest)
                last_saved = time.monotonic()
            if exited:
                break
            if self.cloud.shutting_down.is_set():
                self._update(name, _interrupted=True, _log_offset=reader.offset)
                procs.terminate(pid, started, grace=self.cloud.settings.stop_grace, proc=proc)
                raise Interrupted()
            status = self._doc(name)["TrainingJobStatus"]
            if not signalled and status == "InProgress" and time.time() - run_started > max_runtime:
                self._runtime_exceeded(name)
                status = "Stopping"
            if status == "Stopping" and not signalled:
                signalled = True
                threading.Thread(
                    target=procs.terminate,
                    args=(pid, started, self.cloud.settings.stop_grace, None),
                    daemon=True,
                ).start()
            wake.wait(self.cloud.settings.poll_interval)
            wake.clear()
        if proc is not None:
            proc.wait()
        code = None
        if paths["exit"].exists():
            try:
                code = int(paths["exit"].read_text().strip())
            except ValueError:
                code = None
        self._update(name, _phase="uploading", _exit_code=code, _log_offset=reader.offset, _metrics=metrics.latest)
        self._procs.pop(name.lower(), None)

    def _runtime_exceeded(self, name: str) -> None:
        def change(doc: dict) -> None:
            if doc["TrainingJobStatus"] == "InProgress":
                doc["TrainingJobStatus"] = "Stopping"
                doc["_stop"] = "runtime"
                _transition(doc, "MaxRuntimeExceeded", "Job stopped because max run time was exceeded", time.time())

        self.state.update(TRAINING_JOB, name, change)

    def _finish(self, name: str) -> None:
        doc = self._doc(name)
        paths = self._paths(name)
        code = doc.get("_exit_code")
        stopping = doc["TrainingJobStatus"] == "Stopping"
        if not stopping and code == 0:
            self._set_secondary(name, "Uploading", "Uploading generated training model")
        s3 = self.cloud.client("s3")
        upload_model = stopping or code == 0
        try:
            if upload_model:
                self._upload_model(s3, doc, paths)
            self._upload_tar(s3, doc, paths["output_data"], paths["job"] / "output.tar.gz", "output.tar.gz")
            if doc.get("CheckpointConfig"):
                self._upload_dir(s3, paths["checkpoints"], doc["CheckpointConfig"]["S3Uri"])
        except JobFailure:
            raise
        except Exception as err:
            raise JobFailure(f"InternalServerError: uploading the training output failed: {err}") from None
        # The artifacts must be durable before any client can see the job finished.
        self.cloud.persist()
        now = time.time()
        metrics = self._final_metrics(doc)

        def finish(d: dict) -> None:
            if d["TrainingJobStatus"] in TERMINAL:
                return
            if d["TrainingJobStatus"] == "Stopping":
                d["TrainingJobStatus"] = "Stopped"
                if d.get("_stop") != "runtime":
                    _transition(d, "Stopped", "Training job stopped", now)
                elif d["SecondaryStatusTransitions"]:
                    d["SecondaryStatusTransitions"][-1]["EndTime"] = now
                    d["LastModifiedTime"] = now
            elif code == 0:
                d["TrainingJobStatus"] = "Completed"
                _transition(d, "Completed", "Training job completed", now)
            else:
                d["TrainingJobStatus"] = "Failed"
                d["FailureReason"] = self._failure_reason(paths, code)
                _transition(d, "Failed", "Training job failed", now)
            self._close_times(d, now)
            if metrics:
                d["FinalMetricDataList"] = metrics
            d["_phase"] = "done"

        final = self.state.update(TRAINING_JOB, name, finish)
        log.info("training job %s: %s", name, final and final["TrainingJobStatus"])

    def _close_times(self, d: dict, now: float) -> None:
        d["TrainingEndTime"] = now
        d["LastModifiedTime"] = now
        start = d.get("TrainingStartTime")
        if start is not None:
            seconds = max(1, int(round(now - start)))
            d["TrainingTimeInSeconds"] = seconds
            d["BillableTimeInSeconds"] = seconds

    def _fail(self, name: str, reason: str) -> None:
        log.info("training job %s failed: %s", name, reason)
        now = time.time()
        doc = self.state.get(TRAINING_JOB, name)
        if doc is not None and doc.get("_pid"):
            procs.terminate(doc["_pid"], doc.get("_pstart"), grace=self.cloud.settings.stop_grace)

        def change(d: dict) -> None:
            if d["TrainingJobStatus"] in TERMINAL:
                return
            d["TrainingJobStatus"] = "Failed"
            d["FailureReason"] = reason[:FAILURE_REASON_LIMIT]
            _transition(d, "Failed", "Training job failed", now)
            self._close_times(d, now)
            d["_phase"] = "done"

        self.state.update(TRAINING_JOB, name, change)

    def _failure_reason(self, paths: dict[str, Path], code: int | None) -> str:
        failure = paths["output"] / "failure"
        if failure.exists():
            text = failure.read_text(errors="replace").strip()
            if text:
                return ("AlgorithmError: " + text)[:FAILURE_REASON_LIMIT]
        if code is None:
            return "AlgorithmError: the training process was killed. See job logs for more information."
        return f"AlgorithmError: See job logs for more information, exit code: {code}"

    def _final_metrics(self, doc: dict) -> list[dict]:
        latest = doc.get("_metrics") or {}
        out = []
        for definition in doc["AlgorithmSpecification"].get("MetricDefinitions") or []:
            entry = latest.get(definition["Name"])
            if entry is not None:
                out.append({"MetricName": definition["Name"], "Value": entry[0], "Timestamp": entry[1]})
        return out

    @staticmethod
    def _model_artifacts_uri(body: dict) -> str:
        base = body["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        name = body["TrainingJobName"]
        if (body["OutputDataConfig"].get("CompressionType") or "GZIP") == "NONE":
            return f"{base}/{name}/output/model/"
        return f"{base}/{name}/output/model.tar.gz"

    def _output_key(self, doc: dict, filename: str) -> tuple[str, str]:
        bucket, prefix = split_s3(doc["OutputDataConfig"]["S3OutputPath"])
        prefix = prefix.strip("/")
        key = f"{doc['TrainingJobName']}/output/{filename}"
        return bucket, f"{prefix}/{key}" if prefix else key

    def _upload_model(self, s3, doc: dict, paths: dict[str, Path]) -> None:
        if (doc["OutputDataConfig"].get("CompressionType") or "GZIP") == "NONE":
            self._upload_dir(s3, paths["model"], doc["ModelArtifacts"]["S3ModelArtifacts"])
        else:
            self._upload_tar(s3, doc, paths["model"], paths["job"] / "model.tar.gz", "model.tar.gz")

    def _upload_tar(self, s3, doc: dict, source: Path, tarball: Path, filename: str) -> None:
        _tar_dir(source, tarball)
        bucket, key = self._output_key(doc, filename)
        self._put_file(s3, tarball, bucket, key)

    def _upload_dir(self, s3, source: Path, uri: str) -> None:
        bucket, prefix = split_s3(uri)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        for path in sorted(source.rglob("*")) if source.exists() else []:
            if path.is_file():
                self._put_file(s3, path, bucket, prefix + path.relative_to(source).as_posix())

    @staticmethod
    def _put_file(s3, path: Path, bucket: str, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            s3.upload_file(str(path), bucket, key)
        except ClientError as err:
            raise JobFailure(f"ClientError: cannot write s3://{bucket}/{key}: {err}") from None
        except Exception as err:  # boto3's transfer manager wraps ClientError in S3UploadFailedError
            raise JobFailure(f"ClientError: cannot write s3://{bucket}/{key}: {err}") from None


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


def _transition(doc: dict, status: str, message: str, now: float) -> None:
    transitions = doc.setdefault("SecondaryStatusTransitions", [])
    if transitions and "EndTime" not in transitions[-1]:
        transitions[-1]["EndTime"] = now
    entry = {"Status": status, "StartTime": now, "StatusMessage": message}
    if status in ("Completed", "Failed", "Stopped"):
        entry["EndTime"] = now
    transitions.append(entry)
    doc["SecondaryStatus"] = status
    doc["LastModifiedTime"] = now
