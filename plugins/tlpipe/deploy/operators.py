"""The Amazon provider's SageMaker operators, made safe to retry and to kill.

``FinetuneTrainingOperator`` (``SageMakerTrainingOperator``)
    The job name is the run's deterministic name. Before creating anything it describes the run's attempt
    names (``<name>``, ``<name>-r2``, ...): a Completed job is reused, an InProgress one waited on (logs
    tailed, or deferred), a Failed/Stopped one followed by the next attempt name. So an Airflow retry never
    fails on a name collision and never trains twice. Killing the task stops the job: ``on_kill`` when it
    runs on a worker, ``FinetuneJobTrigger.on_kill`` when it is deferred.
``FinetuneTuningOperator`` (``SageMakerTuningOperator``)
    The same for a hyperparameter tuning job (``<name>``, ``<name>-r2``, ...); killing the task stops it and its
    training jobs.
``DeployModelOperator``, ``DeployEndpointConfigOperator`` (``SageMakerModelOperator``, ``…EndpointConfigOperator``)
    Reuse a model/config of the same name that an earlier try created with the same content.
``DeployEndpointOperator`` (``SageMakerEndpointOperator``, ``operation="create"``)
    Create; the provider turns SageMaker's "Cannot create already existing endpoint" into an UpdateEndpoint
    (whose ``DeploymentConfig`` shifts the traffic). A retry that finds the endpoint already on (or moving to) the new config waits instead of updating again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerBaseOperator,
    SageMakerEndpointConfigOperator,
    SageMakerEndpointOperator,
    SageMakerModelOperator,
    SageMakerTrainingOperator,
    SageMakerTuningOperator,
    serialize,
)
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

from plugins.tlpipe.aws import describe_or_none
from plugins.tlpipe.deploy import links
from plugins.tlpipe.deploy.decisions import TRANSITIONAL, plan_training_job
from plugins.tlpipe.deploy.sagemaker_requests import MAX_TUNING_NAME, job_attempt_name

MAX_JOB_ATTEMPTS = 20


# How each kind of job is stopped: the client method, its name argument, and what the log calls it.
STOP = {
    "training": ("stop_training_job", "TrainingJobName", "training job"),
    "tuning": ("stop_hyper_parameter_tuning_job", "HyperParameterTuningJobName", "tuning job"),
}


def stop_job(client, kind: str, name: str, log) -> None:
    from botocore.exceptions import ClientError

    method, key, label = STOP[kind]
    try:
        getattr(client, method)(**{key: name})
        log.info("stopped SageMaker %s %s", label, name)
    except ClientError as err:
        log.warning("could not stop %s %s: %s", label, name, err)


class _StoppingTrigger(SageMakerTrigger):
    """``SageMakerTrigger`` whose job is stopped when the deferred task is killed."""

    KIND = "training"

    async def on_kill(self) -> None:
        from botocore.exceptions import ClientError

        method, key, label = STOP[self.KIND]
        async with await self.hook().get_async_conn() as client:
            try:
                await getattr(client, method)(**{key: self.job_name})
                self.log.info("stopped SageMaker %s %s", label, self.job_name)
            except ClientError as err:
                self.log.warning("could not stop %s %s: %s", label, self.job_name, err)


class FinetuneJobTrigger(_StoppingTrigger):
    """A training job's trigger: the job is stopped when the deferred task is killed."""


class TuningJobTrigger(_StoppingTrigger):
    """A tuning job's trigger: the tuning job (and so its training jobs) is stopped when the task is killed."""

    KIND = "tuning"


class FinetuneTrainingOperator(SageMakerTrainingOperator):
    """Retry-safe, killable ``SageMakerTrainingOperator`` (see the module docstring)."""

    operator_extra_links = (links.SageMakerTrainingJobLink(), links.RunArtifactsLink())
    template_fields: Sequence[str] = (*SageMakerTrainingOperator.template_fields, "run_artifacts")

    def __init__(self, *, max_job_attempts: int = MAX_JOB_ATTEMPTS, run_artifacts: Any = None, **kwargs):
        kwargs["check_if_job_exists"] = False  # the attempt plan below replaces the timestamp suffix
        super().__init__(**kwargs)
        self.max_job_attempts = max_job_attempts
        self.run_artifacts = run_artifacts  # {"bucket", "endpoint_prefix"} (steps.prepare_finetune)
        self._job_name: str | None = None
        if self.max_ingestion_time and self.check_interval:
            # The trigger polls max_attempts times; cover the whole allowed run time.
            self.max_attempts = max(self.max_attempts, math.ceil(self.max_ingestion_time / self.check_interval) + 1)

    def attempt_names(self, base: str) -> list[str]:
        return [job_attempt_name(base, i) for i in range(1, self.max_job_attempts + 1)]

    def execute(self, context) -> dict:
        base = self.config["TrainingJobName"]
        names = self.attempt_names(base)
        statuses: list[str | None] = []
        for name in names:  # attempts are created in order: the first absent name ends the list
            found = describe_or_none(self.hook.conn.describe_training_job, TrainingJobName=name)
            statuses.append(found["TrainingJobStatus"] if found else None)
            if found is None:
                break
        statuses += [None] * (len(names) - len(statuses))
        plan = plan_training_job(names, statuses)
        self.log.info(plan.reason)
        self._job_name = plan.name
        links.persist(links.SageMakerTrainingJobLink, context, self, job_name=plan.name)
        if self.run_artifacts:
            bucket, prefix = self.run_artifacts["bucket"], f"{self.run_artifacts['endpoint_prefix']}/{plan.name}"
            links.persist(links.RunArtifactsLink, context, self, bucket=bucket, prefix=prefix)
        if plan.action == "create":
            self.config["TrainingJobName"] = plan.name
            return super().execute(context)
        if plan.action == "reuse":
            self._job_name = None
            return self.serialize_result(plan.name)
        if self.deferrable:
            self.defer(trigger=self._trigger(plan.name), method_name="execute_complete", timeout=self._timeout())
        self.hook.check_training_status_with_log(
            plan.name,
            self.hook.non_terminal_states,
            self.hook.training_failed_states,
            wait_for_completion=True,
            check_interval=self.check_interval,
            max_ingestion_time=self.max_ingestion_time,
        )
        return self.serialize_result(plan.name)

    def _timeout(self):
        import datetime

        if self.max_ingestion_time:
            return datetime.timedelta(seconds=self.max_ingestion_time)
        return self.execution_timeout

    def _trigger(self, name: str) -> FinetuneJobTrigger:
        return FinetuneJobTrigger(
            job_name=name,
            job_type="Training",
            waiter_delay=self.check_interval,
            waiter_max_attempts=self.max_attempts,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def defer(self, *, trigger, method_name: str, kwargs: dict[str, Any] | None = None, timeout=None):
        # The provider defers on a plain SageMakerTrigger; ours also stops the job when the task is killed.
        if type(trigger) is SageMakerTrigger and getattr(trigger, "job_type", "") == "Training":
            trigger = self._trigger(trigger.job_name)
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def on_kill(self) -> None:
        if self._job_name:
            stop_job(self.hook.conn, "training", self._job_name, self.log)


class FinetuneTuningOperator(SageMakerTuningOperator):
    """Retry-safe, killable ``SageMakerTuningOperator``: the same attempt plan as ``FinetuneTrainingOperator``
    (``<name>``, ``<name>-r2``, ...; Completed reused, InProgress waited on, Failed/Stopped followed by the next)."""

    def __init__(self, *, max_job_attempts: int = MAX_JOB_ATTEMPTS, **kwargs):
        super().__init__(**kwargs)
        self.max_job_attempts = max_job_attempts
        self._job_name: str | None = None

    def execute(self, context) -> dict:
        base = self.config["HyperParameterTuningJobName"]
        names = [job_attempt_name(base, i, MAX_TUNING_NAME) for i in range(1, self.max_job_attempts + 1)]
        describe = self.hook.conn.describe_hyper_parameter_tuning_job
        statuses: list[str | None] = []
        for name in names:
            found = describe_or_none(describe, HyperParameterTuningJobName=name)
            statuses.append(found["HyperParameterTuningJobStatus"] if found else None)
            if found is None:
                break
        statuses += [None] * (len(names) - len(statuses))
        plan = plan_training_job(names, statuses, kind="tuning job")
        self.log.info(plan.reason)
        self._job_name = plan.name
        if plan.action == "create":
            self.config["HyperParameterTuningJobName"] = plan.name
            return super().execute(context)
        if plan.action == "wait":
            if self.deferrable:
                self.defer(trigger=self._trigger(plan.name), method_name="execute_complete", timeout=self._timeout())
            self.hook.check_status(
                plan.name,
                "HyperParameterTuningJobStatus",
                self.hook.describe_tuning_job,
                self.check_interval,
                self.max_ingestion_time,
            )
        self._job_name = None
        return {"Tuning": serialize(self.hook.describe_tuning_job(plan.name))}

    def _timeout(self):
        import datetime

        return datetime.timedelta(seconds=self.max_ingestion_time) if self.max_ingestion_time else None

    def _trigger(self, name: str) -> TuningJobTrigger:
        return TuningJobTrigger(
            job_name=name,
            job_type="tuning",
            waiter_delay=self.check_interval,
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def defer(self, *, trigger, method_name: str, kwargs: dict[str, Any] | None = None, timeout=None):
        if type(trigger) is SageMakerTrigger and getattr(trigger, "job_type", "") == "tuning":
            trigger = self._trigger(trigger.job_name)
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def on_kill(self) -> None:
        if self._job_name:
            stop_job(self.hook.conn, "tuning", self._job_name, self.log)


class RegisterModelVersionOperator(SageMakerBaseOperator):
    """Registers the fine-tuned model as a new version of its model package group (``config``: the
    CreateModelPackage request), creating the group first with the provider hook's
    ``create_model_package_group``; returns the version's ARN. A retry of the run finds the version its earlier
    try registered (same training job in its metadata) instead of registering a second one."""

    RECENT_VERSIONS = 20

    def execute(self, context) -> str:
        if "ModelPackageArn" in self.config:  # the run deploys a version registered before
            return self.config["ModelPackageArn"]
        group = self.config["ModelPackageGroupName"]
        self.hook.create_model_package_group(group, f"models deployed to the endpoint {group}")
        job = (self.config.get("CustomerMetadataProperties") or {}).get("training-job")
        listed = self.hook.conn.list_model_packages(
            ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending", MaxResults=self.RECENT_VERSIONS
        )["ModelPackageSummaryList"]
        for summary in listed:
            found = self.hook.conn.describe_model_package(ModelPackageName=summary["ModelPackageArn"])
            if job and (found.get("CustomerMetadataProperties") or {}).get("training-job") == job:
                self.log.info("%s already registers training job %s: reusing it", found["ModelPackageArn"], job)
                return found["ModelPackageArn"]
        arn = self.hook.conn.create_model_package(**self.config)["ModelPackageArn"]
        self.log.info("registered %s (%s)", arn, self.config["ModelApprovalStatus"])
        return arn


class DeployModelOperator(SageMakerModelOperator):
    """``SageMakerModelOperator`` that reuses the model an earlier try of the run created."""

    def execute(self, context) -> dict:
        name = self.config["ModelName"]
        found = describe_or_none(self.hook.conn.describe_model, ModelName=name)
        if found is None:
            return super().execute(context)
        want = self.config["PrimaryContainer"]
        have = found.get("PrimaryContainer") or {}
        if (have.get("Image"), have.get("ModelDataUrl")) != (want.get("Image"), want.get("ModelDataUrl")):
            raise RuntimeError(
                f"model {name} exists with another image or artifact ({have.get('ModelDataUrl')}); "
                "it was not created by this run"
            )
        self.log.info("model %s exists with the same artifact: reusing it", name)
        return {"Model": serialize(found)}


class DeployEndpointConfigOperator(SageMakerEndpointConfigOperator):
    """``SageMakerEndpointConfigOperator`` that reuses the config an earlier try of the run created."""

    def execute(self, context) -> dict:
        name = self.config["EndpointConfigName"]
        found = describe_or_none(self.hook.conn.describe_endpoint_config, EndpointConfigName=name)
        if found is None:
            return super().execute(context)
        want = [
            (v["ModelName"], v["InstanceType"], int(v["InitialInstanceCount"]))
            for v in self.config["ProductionVariants"]
        ]
        have = [
            (v.get("ModelName"), v.get("InstanceType"), v.get("InitialInstanceCount"))
            for v in found.get("ProductionVariants") or []
        ]
        if want != have:
            raise RuntimeError(
                f"endpoint config {name} exists with other variants {have}; it was not created by this run"
            )
        self.log.info("endpoint config %s exists with the same variants: reusing it", name)
        return {"EndpointConfig": serialize(found)}


class DeployEndpointOperator(SageMakerEndpointOperator):
    """``SageMakerEndpointOperator(operation="create")``: create, else update (the provider decides), retry-safe."""

    operator_extra_links = (links.SageMakerEndpointLink(),)

    def execute(self, context) -> dict:
        name, target = self.config["EndpointName"], self.config["EndpointConfigName"]
        links.persist(links.SageMakerEndpointLink, context, self, endpoint_name=name)
        found = describe_or_none(self.hook.conn.describe_endpoint, EndpointName=name)
        pending = ((found or {}).get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        if found and found.get("EndpointStatus") == "InService" and found.get("EndpointConfigName") == target:
            self.log.info("endpoint %s already serves %s", name, target)
            return {
                "EndpointConfig": serialize(self.hook.describe_endpoint_config(target)),
                "Endpoint": serialize(found),
            }
        moving = found is not None and found.get("EndpointStatus") in TRANSITIONAL
        if moving and target in (found.get("EndpointConfigName"), pending):
            self.log.info("endpoint %s is already %s towards %s: waiting", name, found["EndpointStatus"], target)
            self.hook.get_waiter("endpoint_in_service").wait(
                EndpointName=name,
                WaiterConfig={
                    "Delay": self.check_interval,
                    "MaxAttempts": math.ceil(self.max_ingestion_time / max(self.check_interval, 1)),
                },
            )
            return {
                "EndpointConfig": serialize(self.hook.describe_endpoint_config(target)),
                "Endpoint": serialize(self.hook.describe_endpoint(name)),
            }
        return super().execute(context)
