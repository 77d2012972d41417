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

import logging
import os
import threading
import time
from pathlib import Path

from . import procs, training_container
from .errors import AwsError, arn, not_found, validation
from .runtime import Runtime
from .state import TRAINING_JOB
from .training_container import FAILURE_REASON_LIMIT, JobFailure, MetricScanner, transition

log = logging.getLogger("localcloud.jobs")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = {"Completed", "Failed", "Stopped"}


class Interrupted(Exception):
    """localcloud is shutting down; the job resumes on the next start."""


class TrainingJobs:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.state = runtime.state
        self.root = runtime.data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._threads: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Event] = {}
        self._procs: dict[str, object] = {}
        self._lock = threading.Lock()

    # -- API ---------------------------------------------------------------------------------------------
    def check_image(self, algorithm: dict, environment: dict | None) -> None:
        """Refuse an image localcloud cannot run as a training job, or a command/environment it does not allow."""
        image = algorithm["TrainingImage"]
        commands = self.runtime.images.resolve(image)
        if commands is None or not commands.train:
            raise validation(
                f"localcloud has no training command for image '{image}'. Map it with --images or LOCALCLOUD_IMAGES."
            )
        if refusal := commands.refusal(algorithm, environment):
            raise validation(refusal)

    def create(self, body: dict, region: str) -> str:
        name = body["TrainingJobName"]
        self.check_image(body["AlgorithmSpecification"], body.get("Environment"))
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
                "ModelArtifacts": {"S3ModelArtifacts": training_container.model_artifacts_uri(body)},
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
        transition(doc, "Starting", "Preparing the instances for training", now)
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
            transition(doc, "Stopping", "Stopping the training job", now)

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
                transition(doc, status, message, time.time())

        self.state.update(TRAINING_JOB, name, change)

    def _check(self, name: str) -> dict:
        if self.runtime.shutting_down.is_set():
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
        return training_container.job_paths(self.root / name.lower())

    def _prepare(self, name: str) -> None:
        doc = self._doc(name)
        paths = self._paths(name)
        restarting = doc.get("TrainingStartTime") is not None
        if restarting:
            self._set_secondary(name, "Restarting", "Restarting the training job: localcloud restarted while it ran")
        training_container.reset(paths)

        now = time.time()

        def begin(d: dict) -> None:
            d.setdefault("TrainingStartTime", now)
            transition(d, "Downloading", "Downloading input data", now)

        self.state.update(TRAINING_JOB, name, begin)
        training_container.write_config(doc, paths)
        s3 = self.runtime.client("s3")
        for channel in doc.get("InputDataConfig") or []:
            self._check(name)
            source = channel["DataSource"]["S3DataSource"]
            training_container.download_prefix(
                s3, source["S3Uri"], paths["data"] / channel["ChannelName"], required=True, doc=doc
            )
        checkpoint = doc.get("CheckpointConfig")
        if checkpoint:
            training_container.download_prefix(s3, checkpoint["S3Uri"], paths["checkpoints"], required=False, doc=doc)

        doc = self._check(name)
        if doc["TrainingJobStatus"] == "Stopping":
            self._update(name, _phase="uploading", _exit_code=None)
            return
        commands, argv = training_container.command(self.runtime.images, doc, paths)
        env = training_container.environment(doc, paths, commands)
        run_offset = paths["log"].stat().st_size if paths["log"].exists() else 0
        stream = doc.get("_stream") or f"{doc['TrainingJobName']}/algo-1-{int(time.time())}"
        proc = procs.spawn(
            [os.fspath(self.runtime.python), "-m", "localcloud.runner", str(paths["exit"]), "--", *argv],
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
                transition(d, "Training", "Training image download completed. Training in progress.", now)

        self.state.update(TRAINING_JOB, name, running)
        log.info("training job %s: started %s (pid %s)", name, argv, proc.pid)

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
        stream = procs.CloudWatchStream(self.runtime.client("logs"), LOG_GROUP, doc["_stream"])
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
            if self.runtime.shutting_down.is_set():
                self._update(name, _interrupted=True, _log_offset=reader.offset)
                procs.terminate(pid, started, grace=self.runtime.settings.stop_grace, proc=proc)
                raise Interrupted()
            status = self._doc(name)["TrainingJobStatus"]
            if not signalled and status == "InProgress" and time.time() - run_started > max_runtime:
                self._runtime_exceeded(name)
                status = "Stopping"
            if status == "Stopping" and not signalled:
                signalled = True
                threading.Thread(
                    target=procs.terminate, args=(pid, started, self.runtime.settings.stop_grace, None), daemon=True
                ).start()
            wake.wait(self.runtime.settings.poll_interval)
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
                transition(doc, "MaxRuntimeExceeded", "Job stopped because max run time was exceeded", time.time())

        self.state.update(TRAINING_JOB, name, change)

    def _finish(self, name: str) -> None:
        doc = self._doc(name)
        paths = self._paths(name)
        code = doc.get("_exit_code")
        stopping = doc["TrainingJobStatus"] == "Stopping"
        if not stopping and code == 0:
            self._set_secondary(name, "Uploading", "Uploading generated training model")
        training_container.upload_outputs(self.runtime.client("s3"), doc, paths, model=stopping or code == 0)
        # The artifacts must be durable before any client can see the job finished.
        self.runtime.persist()
        now = time.time()
        metrics = training_container.final_metrics(doc)

        def finish(d: dict) -> None:
            if d["TrainingJobStatus"] in TERMINAL:
                return
            if d["TrainingJobStatus"] == "Stopping":
                d["TrainingJobStatus"] = "Stopped"
                if d.get("_stop") != "runtime":
                    transition(d, "Stopped", "Training job stopped", now)
                elif d["SecondaryStatusTransitions"]:
                    d["SecondaryStatusTransitions"][-1]["EndTime"] = now
                    d["LastModifiedTime"] = now
            elif code == 0:
                d["TrainingJobStatus"] = "Completed"
                transition(d, "Completed", "Training job completed", now)
            else:
                d["TrainingJobStatus"] = "Failed"
                d["FailureReason"] = training_container.failure_reason(paths, code)
                transition(d, "Failed", "Training job failed", now)
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
            procs.terminate(doc["_pid"], doc.get("_pstart"), grace=self.runtime.settings.stop_grace)

        def change(d: dict) -> None:
            if d["TrainingJobStatus"] in TERMINAL:
                return
            d["TrainingJobStatus"] = "Failed"
            d["FailureReason"] = reason[:FAILURE_REASON_LIMIT]
            transition(d, "Failed", "Training job failed", now)
            self._close_times(d, now)
            d["_phase"] = "done"

        self.state.update(TRAINING_JOB, name, change)
