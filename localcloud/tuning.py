"""Hyperparameter tuning jobs that really run their training jobs.

``CreateHyperParameterTuningJob`` draws the training jobs' hyperparameters up front (``Random``: each range
sampled on its ``ScalingType``, seeded by the tuning job's name; ``Grid``: every combination of the
categorical ranges, in order) and a supervisor thread starts them as ordinary localcloud training jobs, at most
``MaxParallelTrainingJobs`` at a time and ``MaxNumberOfTrainingJobs`` in all. Each child is named
``<tuning job>-<NNN>-<8 hex>`` as SageMaker names them, carries ``TuningJobArn`` and the reserved
``_tuning_objective_metric`` hyperparameter, and is scored on its ``FinalMetricDataList`` value of the objective.

Statuses are SageMaker's: ``InProgress`` -> ``Completed`` (every child finished and at least one has an
objective value; ``BestTrainingJob`` is the best of them), ``Failed`` (none has one), or ``Stopping`` ->
``Stopped`` after ``StopHyperParameterTuningJob`` (running children are stopped). A restart of localcloud
resumes the supervisor; its children resume as training jobs do.

Not supported (``ValidationException`` naming it): the ``Bayesian`` and ``Hyperband`` strategies, warm starts,
early stopping ``Auto``, several training job definitions, and ``TuningJobCompletionCriteria``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from .errors import AwsError, arn, validation
from .jobs import TrainingJobs
from .responses import decode_token, encode_token, listing
from .runtime import Runtime
from .search_space import check_space, draw_configs
from .state import TRAINING_JOB, TUNING_JOB

log = logging.getLogger("localcloud.tuning")

TERMINAL = {"Completed", "Failed", "Stopped"}


def tuning_not_found(name: str) -> AwsError:
    return AwsError("ResourceNotFound", f"Amazon SageMaker can't find a tuning job with name {name}")


# -- the tuning jobs ------------------------------------------------------------------------------------------
class TuningJobs:
    def __init__(self, runtime: Runtime, jobs: TrainingJobs):
        self.runtime, self.jobs, self.state = runtime, jobs, runtime.state
        self._threads: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def create(self, body: dict, region: str) -> str:
        check_space(body)
        definition = body["TrainingJobDefinition"]
        self.jobs.check_image(definition["AlgorithmSpecification"], definition.get("Environment"))
        name = body["HyperParameterTuningJobName"]
        config = body["HyperParameterTuningJobConfig"]
        job_arn = arn(region, "hyper-parameter-tuning-job", name)
        now = time.time()
        doc = {k: v for k, v in body.items() if k != "Tags"}
        doc.update(
            {
                "HyperParameterTuningJobArn": job_arn,
                "HyperParameterTuningJobStatus": "InProgress",
                "CreationTime": now,
                "LastModifiedTime": now,
                "_region": region,
                "_configs": draw_configs(name, config),
                "_children": [],
            }
        )
        if not self.state.insert(TUNING_JOB, name, job_arn, now, doc):
            raise AwsError("ResourceInUse", f"Hyperparameter tuning job with name {name} already exists.")
        if body.get("Tags"):
            self.state.add_tags(job_arn, body["Tags"])
        self._start(name)
        return job_arn

    def describe(self, name: str) -> dict:
        doc = self.state.get(TUNING_JOB, name)
        if doc is None:
            raise tuning_not_found(name)
        summaries = self._summaries(doc)
        counters = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
        objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for s in summaries:
            status = s["TrainingJobStatus"]
            counters["NonRetryableError" if status == "Failed" else status if status in counters else "InProgress"] += 1
            objective[s["ObjectiveStatus"]] += 1
        best = self._best(doc, summaries)
        out = {**doc, "TrainingJobStatusCounters": counters, "ObjectiveStatusCounters": objective}
        if best:
            out["BestTrainingJob"] = best
        return out

    def stop(self, name: str) -> None:
        def change(doc: dict) -> None:
            status = doc["HyperParameterTuningJobStatus"]
            if status != "InProgress":
                raise validation(f"The request was rejected because the tuning job is in status {status}.")
            doc["HyperParameterTuningJobStatus"] = "Stopping"
            doc["LastModifiedTime"] = time.time()

        if self.state.update(TUNING_JOB, name, change) is None:
            raise tuning_not_found(name)
        wake = self._wake.get(name.lower())
        if wake is not None:
            wake.set()

    def list_training_jobs(self, body: dict) -> dict:
        doc = self.state.get(TUNING_JOB, body["HyperParameterTuningJobName"])
        if doc is None:
            raise tuning_not_found(body["HyperParameterTuningJobName"])
        summaries = self._summaries(doc)
        if body.get("StatusEquals"):
            summaries = [s for s in summaries if s["TrainingJobStatus"] == body["StatusEquals"]]
        sort_by = body.get("SortBy") or "CreationTime"
        descending = (body.get("SortOrder") or "Descending") == "Descending"
        if sort_by == "FinalObjectiveMetricValue":  # jobs without a value come last, whatever the order
            scored = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
            scored.sort(key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], reverse=descending)
            summaries = scored + [s for s in summaries if s not in scored]
        else:
            key = {"Name": "TrainingJobName", "Status": "TrainingJobStatus"}.get(sort_by, "CreationTime")
            summaries.sort(key=lambda s: s[key], reverse=descending)
        start, size = decode_token(body.get("NextToken")), body.get("MaxResults") or 10
        token = encode_token(start + size) if start + size < len(summaries) else None
        return listing("TrainingJobSummaries", summaries[start : start + size], token)

    def recover(self) -> None:
        for doc in self.state.list(TUNING_JOB):
            if doc["HyperParameterTuningJobStatus"] not in TERMINAL:
                self._start(doc["HyperParameterTuningJobName"])

    def shutdown(self, timeout: float = 10) -> None:
        for wake in list(self._wake.values()):
            wake.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- reading the children ----------------------------------------------------------------------------
    def _summaries(self, doc: dict) -> list[dict]:
        objective = doc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
        out = []
        for child, tuned in doc["_children"]:
            job = self.state.get(TRAINING_JOB, child)
            if job is None:
                continue
            summary = {
                "TrainingJobName": job["TrainingJobName"],
                "TrainingJobArn": job["TrainingJobArn"],
                "TuningJobName": doc["HyperParameterTuningJobName"],
                "CreationTime": job["CreationTime"],
                "TrainingJobStatus": job["TrainingJobStatus"],
                "TunedHyperParameters": tuned,
                "ObjectiveStatus": "Pending",
            }
            for key in ("TrainingStartTime", "TrainingEndTime", "FailureReason"):
                if job.get(key) is not None:
                    summary[key] = job[key]
            value = next(
                (
                    m["Value"]
                    for m in job.get("FinalMetricDataList") or []
                    if m["MetricName"] == objective["MetricName"]
                ),
                None,
            )
            if job["TrainingJobStatus"] == "Completed" and value is not None:
                summary["ObjectiveStatus"] = "Succeeded"
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "Type": objective["Type"],
                    "MetricName": objective["MetricName"],
                    "Value": value,
                }
            elif job["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
                summary["ObjectiveStatus"] = "Failed"
            out.append(summary)
        return out

    @staticmethod
    def _best(doc: dict, summaries: list[dict]) -> dict | None:
        scored = [s for s in summaries if s["ObjectiveStatus"] == "Succeeded"]
        if not scored:
            return None
        sign = (
            1 if doc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["Type"] == "Maximize" else -1
        )
        # Ties go to the earlier job, as the first to reach the value.
        return max(
            enumerate(scored),
            key=lambda p: (sign * p[1]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], -p[0]),
        )[1]

    # -- the supervisor ----------------------------------------------------------------------------------
    def _start(self, name: str) -> None:
        key = name.lower()
        with self._lock:
            if key in self._threads and self._threads[key].is_alive():
                return
            self._wake[key] = threading.Event()
            thread = threading.Thread(target=self._supervise, args=(name,), name=f"tuning-{name}", daemon=True)
            self._threads[key] = thread
        thread.start()

    def _supervise(self, name: str) -> None:
        try:
            while not self.runtime.shutting_down.is_set():
                if self._step(name):
                    return
                self._wake[name.lower()].wait(self.runtime.settings.poll_interval)
                self._wake[name.lower()].clear()
        except AwsError as err:  # a training job it could not start
            self._finish(name, "Failed", f"A training job could not be started: {err.message}")
        except Exception as err:  # localcloud's own fault: report it on the tuning job rather than lose it
            log.exception("tuning job %s: internal error", name)
            self._finish(name, "Failed", f"InternalServerError: {err}")

    def _step(self, name: str) -> bool:
        """One look at the children: start the next ones, or finish. True when the tuning job is terminal."""
        doc = self.state.get(TUNING_JOB, name)
        if doc is None or doc["HyperParameterTuningJobStatus"] in TERMINAL:
            return True
        statuses = [(self.state.get(TRAINING_JOB, c) or {}).get("TrainingJobStatus") for c, _ in doc["_children"]]
        running = [c for (c, _), s in zip(doc["_children"], statuses) if s in ("InProgress", "Stopping")]
        if doc["HyperParameterTuningJobStatus"] == "Stopping":
            for child in running:
                try:
                    self.jobs.stop(child)
                except AwsError:
                    pass  # already stopping or finished
            if not running:
                self._finish(name, "Stopped")
                return True
            return False
        parallel = doc["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxParallelTrainingJobs"]
        launched = len(doc["_children"])
        while len(running) < parallel and launched < len(doc["_configs"]):
            running.append(self._launch(doc, launched))
            launched += 1
        if not running and launched == len(doc["_configs"]):
            summaries = self._summaries(self.state.get(TUNING_JOB, name))
            if any(s["ObjectiveStatus"] == "Succeeded" for s in summaries):
                self._finish(name, "Completed")
            else:
                reasons = sorted({s.get("FailureReason", s["TrainingJobStatus"]) for s in summaries})
                self._finish(name, "Failed", "No training job succeeded: " + "; ".join(reasons)[:900])
            return True
        return False

    def _launch(self, doc: dict, index: int) -> str:
        definition = doc["TrainingJobDefinition"]
        tuned = doc["_configs"][index]
        objective = doc["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"]
        token = hashlib.sha256(f"{doc['HyperParameterTuningJobArn']}/{index}".encode()).hexdigest()[:8]
        child = f"{doc['HyperParameterTuningJobName']}-{index + 1:03d}-{token}"
        body = {
            "TrainingJobName": child,
            "HyperParameters": {
                **(definition.get("StaticHyperParameters") or {}),
                **tuned,
                "_tuning_objective_metric": objective,
            },
            "TuningJobArn": doc["HyperParameterTuningJobArn"],
            **{
                k: definition[k]
                for k in (
                    "AlgorithmSpecification",
                    "RoleArn",
                    "InputDataConfig",
                    "OutputDataConfig",
                    "ResourceConfig",
                    "StoppingCondition",
                    "VpcConfig",
                    "CheckpointConfig",
                    "Environment",
                    "EnableNetworkIsolation",
                )
                if k in definition
            },
        }
        # Recorded before the job exists: a restart in between finds the name and does not launch it twice.
        self.state.update(
            TUNING_JOB, doc["HyperParameterTuningJobName"], lambda d: d["_children"].append([child, tuned])
        )
        doc["_children"].append([child, tuned])
        if self.state.get(TRAINING_JOB, child) is None:
            self.jobs.create(body, doc["_region"])
        log.info("tuning job %s: started training job %s with %s", doc["HyperParameterTuningJobName"], child, tuned)
        return child

    def _finish(self, name: str, status: str, reason: str | None = None) -> None:
        def change(d: dict) -> None:
            if d["HyperParameterTuningJobStatus"] in TERMINAL:
                return
            now = time.time()
            d.update(
                {"HyperParameterTuningJobStatus": status, "HyperParameterTuningEndTime": now, "LastModifiedTime": now}
            )
            if reason:
                d["FailureReason"] = reason

        self.state.update(TUNING_JOB, name, change)
        log.info("tuning job %s: %s%s", name, status, f" ({reason})" if reason else "")
