"""What the deploy DAG's Python tasks do: read and change SageMaker/S3 state around the decisions in
``plugins.tlpipe.deploy.decisions``. Clients come from Airflow connections (``s3.aws_conn_id``, which may carry an
``endpoint_url``) and are created only when a task runs.

    prepare_finetune     Params + triggering event -> inputs, resource names, the CreateTrainingJob request
    gate_deployment      live endpoint state + training metrics -> deploy or not, and the rollback target
    registration_request the CreateModelPackage request: a Model Registry version, approved by the gate's verdict
    settle_approval      a rejected version gets the gate's reason; the branch to wait for approval or skip
    deploy_requests      CreateModel (from the approved version) / CreateEndpointConfig / CreateEndpoint requests
    verify_endpoint      the endpoint is InService on this run's config
    smoke_test_endpoint  validation images through sagemaker-runtime

What happens after (rollback, retention, lineage, the run's record) is ``plugins.tlpipe.deploy.closing``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Callable, Mapping

from plugins.tlpipe import aws
from plugins.tlpipe.aws import describe_or_none
from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.deploy import autoscaling, guardrails, registry, tuning
from plugins.tlpipe.deploy import decisions as decide
from plugins.tlpipe.deploy import sagemaker_requests as requests
from training.contracts import PRIMARY_METRIC

log = logging.getLogger(__name__)

ENDPOINT_WAIT_SECONDS = 3600


# -- before training ------------------------------------------------------------------------------------------
def prepare_finetune(
    cfg: PipelineConfig,
    params: Mapping[str, Any],
    *,
    dag_id: str,
    run_id: str,
    event: Mapping | None,
    read_latest: Callable[[], Mapping | None],
) -> dict:
    """Inputs of this run and its validated CreateTrainingJob request."""
    needs_record = event is None and not (params.get("base_model_uri") and params.get("domain_dataset_uri"))
    latest = read_latest() if needs_record else None
    inputs = decide.resolve_inputs(params, event, latest)
    log.info("fine-tuning %s on %s (inputs from %s)", inputs.model_uri, inputs.domain_train_uri, inputs.source)
    names = requests.resource_names(cfg.sagemaker.resource_prefix, run_id)
    hyperparameters = {
        **dict(params.get("hyperparameters") or {}),
        "compare_scratch": bool(params["compare_scratch"]),
        # the job writes the model this policy ships; the gate checks it again on the job's metrics
        "baseline_policy": params["baseline_policy"],
        "baseline_margin": params["baseline_margin"],
    }
    lineage_tags = {
        "endpoint": params["endpoint_name"],
        "dag-id": dag_id,
        "run-id": run_id,
        "pretrained-sha256": inputs.model_sha256,
        "dataset-fingerprint": inputs.dataset_fingerprint,
    }
    request = requests.training_job_request(
        cfg.sagemaker,
        cfg.s3,
        job_name=names.job,
        model_uri=inputs.model_uri,
        train_uri=inputs.domain_train_uri,
        validation_uri=inputs.domain_validation_uri,
        instance_type=params["training_instance_type"],
        instance_count=params["training_instance_count"],
        hyperparameters=hyperparameters,
        lineage=lineage_tags,
    )
    requests.validate("CreateTrainingJob", request)
    check_before_any_job(params, names, request)
    tuning_request = None
    if params.get("tuning"):
        tuning_request = tuning.tuning_job_request(cfg.sagemaker.tuning, name=names.tuning_job, training=request)
        tuning.validate_tuning(tuning_request)
    return {
        "inputs": inputs.model_dump(),
        "names": asdict(names),
        "endpoint": params["endpoint_name"],
        # Where the runs' TensorBoard logs and reports go, one folder per job (the fine-tune task links there).
        "run_artifacts": {
            "bucket": cfg.s3.bucket,
            "endpoint_prefix": decide.run_artifacts_key(cfg.s3.key, params["endpoint_name"], ""),
        },
        "training_request": request,
        "tuning_request": tuning_request,
        # A named, approved Model Registry version to deploy instead of fine-tuning (a rollback by hand).
        "model_package_arn": params.get("model_package_arn") or None,
    }


def check_before_any_job(params: Mapping[str, Any], names, training_request: Mapping[str, Any]) -> None:
    """What would otherwise fail only after the (paid) training job: the job's hyperparameters as the job reads
    them, and the endpoint's requests with this run's serving instance type and count."""
    from training.finetune.hyperparameters import FinetuneError, parse_hyperparameters

    try:
        parse_hyperparameters(training_request["HyperParameters"])
    except FinetuneError as err:
        raise requests.RequestError("CreateTrainingJob", [str(err)]) from None
    draft = requests.endpoint_config_request(
        config_name=names.endpoint_config,
        model_name=names.model,
        instance_type=params["serving_instance_type"],
        instance_count=params["serving_instance_count"],
        tag_values={},
    )
    requests.validate("CreateEndpointConfig", draft)


def finetune_task(prepared: Mapping[str, Any]) -> str:
    """The task that runs this run's fine-tune: one training job, or a tuning job when the run asked for one;
    none when the run deploys a named Model Registry version."""
    if prepared.get("model_package_arn"):
        return "read_metrics"
    return "tune" if prepared.get("tuning_request") else "finetune"


def version_outcome(client, arn: str) -> dict:
    """A named Model Registry version as ``training_outcome`` describes a fresh job: its artifact, the metrics
    and the training job recorded when it was registered. It must be Approved."""
    version = registry.approved_version(client, arn)
    metadata = version["metadata"]
    job = metadata.get("training-job")
    described = describe_or_none(client.describe_training_job, TrainingJobName=job) if job else None
    log.info("deploying the named version %s (training job %s), no fine-tune", arn, job)
    return {
        "job": job,
        "status": (described or {}).get("TrainingJobStatus"),
        "model_artifacts": version["container"].get("ModelDataUrl"),
        "metrics": registry.recorded_metrics(metadata),
        "tuning": None,
        "training_job": dict(described or {}),
        "model_package_arn": arn,
        "domain_validation_uri": metadata.get("domain-validation-uri"),
    }


def training_outcome(training: Mapping[str, Any] | None, tuned: Mapping[str, Any] | None = None, client=None) -> dict:
    """The finetune (or tune) operator's XCom -> the job's name, artifact and FinalMetricDataList metrics.

    After a tuning job, the job is its best training job (described with ``client``), and ``tuning`` lists
    every candidate with its tuned values and objective.
    """
    search = None
    if tuned is not None:
        from airflow.providers.amazon.aws.operators.sagemaker import serialize

        description = tuned["Tuning"]
        best = tuning.best_training_job(description)
        name = description["HyperParameterTuningJobName"]
        summaries = aws.paginate(
            client,
            "list_training_jobs_for_hyper_parameter_tuning_job",
            "TrainingJobSummaries",
            HyperParameterTuningJobName=name,
        )
        training = {"Training": serialize(client.describe_training_job(TrainingJobName=best))}
        search = {"name": name, "best": best, "candidates": tuning.candidates(description, summaries)}
        log.info("tuning job %s: best of %d training jobs is %s", name, len(summaries), best)
    if training is None:
        raise ValueError("neither the training job nor the tuning job returned a result")
    job = training["Training"]
    metrics = decide.final_metrics(job)
    log.info(
        "training job %s: %s",
        job.get("TrainingJobName"),
        ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "no final metrics",
    )
    return {
        "job": job.get("TrainingJobName"),
        "status": job.get("TrainingJobStatus"),
        "model_artifacts": (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts"),
        "metrics": metrics,
        "tuning": search,
        "training_job": dict(job),  # the DescribeTrainingJob answer, for the lineage record
    }


# -- the gate -------------------------------------------------------------------------------------------------
def list_tags(client, arn: str) -> list[dict]:
    out, token = [], None
    while True:
        page = client.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
        out.extend(page.get("Tags", []))
        token = page.get("NextToken")
        if not token:
            return out


def inspect_endpoint(client, endpoint: str) -> dict:
    """The endpoint's plan (create/update, rollback target) and the live model's accuracy tag."""
    description = describe_or_none(client.describe_endpoint, EndpointName=endpoint)
    plan = decide.plan_endpoint(endpoint, description)
    live_model = accuracy = None
    if description:
        config = client.describe_endpoint_config(EndpointConfigName=description["EndpointConfigName"])
        live_model = config["ProductionVariants"][0]["ModelName"]
        model = describe_or_none(client.describe_model, ModelName=live_model)
        if model:
            accuracy = decide.live_accuracy(requests.tag_dict(list_tags(client, model["ModelArn"])))
    return {"plan": asdict(plan), "live_model": live_model, "live_accuracy": accuracy}


def gate_deployment(
    client,
    *,
    endpoint: str,
    metrics: Mapping[str, float],
    threshold: float,
    baseline_policy: str = decide.DEFAULT_BASELINE_POLICY,
    baseline_margin: float = decide.DEFAULT_BASELINE_MARGIN,
    named_version: str | None = None,
) -> dict:
    state = inspect_endpoint(client, endpoint)
    log.info(state["plan"]["reason"])
    if named_version:  # approved already, and named by a person: not judged against the live model again
        reason = f"deploying the named approved version {named_version}"
        log.info(reason)
        decision = {"deploy": True, "reason": reason, "accuracy": metrics.get(PRIMARY_METRIC)}
        decision.update(threshold=threshold, live_accuracy=state["live_accuracy"], named_version=named_version)
        return {"deploy": True, "reason": reason, "decision": decision, "endpoint_plan": state["plan"]}
    decision = decide.quality_gate(
        metrics,
        threshold,
        state["live_accuracy"],
        state["live_model"],
        baseline_policy=baseline_policy,
        baseline_margin=baseline_margin,
    )
    log.info(decision.reason)
    return {
        "deploy": decision.deploy,
        "reason": decision.reason,
        "decision": decision.as_dict(),
        "endpoint_plan": state["plan"],
    }


# -- the Model Registry ---------------------------------------------------------------------------------------
def _lineage_tags(prepared: Mapping[str, Any], outcome: Mapping[str, Any], dag_id: str, run_id: str) -> dict:
    inputs = prepared["inputs"]
    return {
        decide.ENDPOINT_TAG: prepared["endpoint"],
        "training-job": outcome["job"],
        "dag-id": dag_id,
        "run-id": run_id,
        "pretrained-sha256": inputs.get("model_sha256"),
        "dataset-fingerprint": inputs.get("dataset_fingerprint"),
        "domain-validation-uri": inputs.get("domain_validation_uri"),
    }


def registration_request(
    cfg: PipelineConfig,
    params: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    gate: Mapping[str, Any],
    dag_id: str,
    run_id: str,
) -> dict:
    if outcome.get("model_package_arn"):  # a named version is registered already
        return {"ModelPackageArn": outcome["model_package_arn"]}
    status = registry.approval_status(gate["deploy"], params["approval"])
    log.info("registering the model as %s (approval %s): %s", status, params["approval"], gate["reason"])
    return registry.model_package_request(
        cfg.sagemaker,
        group=cfg.sagemaker.package_group(prepared["endpoint"]),
        model_data_url=outcome["model_artifacts"],
        status=status,
        metrics=outcome["metrics"],
        lineage=_lineage_tags(prepared, outcome, dag_id, run_id),
        description=gate["reason"],
    )


def settle_approval(client, version_arn: str, gate: Mapping[str, Any]) -> dict:
    """The version as the gate leaves it: rejected ones carry the gate's reason."""
    if not gate["deploy"]:
        return registry.settle_rejection(client, version_arn, gate["reason"])
    return registry.version_summary(client.describe_model_package(ModelPackageName=version_arn))


# -- deploying ------------------------------------------------------------------------------------------------
def deploy_requests(
    cfg: PipelineConfig,
    params: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    gate: Mapping[str, Any],
    version: Mapping[str, Any],
    dag_id: str,
    run_id: str,
) -> dict:
    """``version``: the approved Model Registry version (``registry.approved_version``) whose container is
    deployed."""
    names, endpoint = prepared["names"], prepared["endpoint"]
    model_tags = {
        decide.ACCURACY_TAG: gate["decision"]["accuracy"],
        **_lineage_tags(prepared, outcome, dag_id, run_id),
        "model-package": version["arn"],
    }
    model = requests.model_request(
        cfg.sagemaker, model_name=names["model"], container=version["container"], tag_values=model_tags
    )
    config = requests.endpoint_config_request(
        config_name=names["endpoint_config"],
        model_name=names["model"],
        instance_type=params["serving_instance_type"],
        instance_count=params["serving_instance_count"],
        tag_values={decide.ENDPOINT_TAG: endpoint, "run-id": run_id, "training-job": outcome["job"]},
        data_capture=guardrails.data_capture_config(cfg.sagemaker.data_capture, cfg.s3),
    )
    alarms = guardrails.alarm_requests(cfg.sagemaker, endpoint=endpoint)
    guardrails.check_alarm_requests(alarms)
    endpoint_req = requests.endpoint_request(endpoint_name=endpoint, config_name=names["endpoint_config"])
    action = gate["endpoint_plan"]["action"]
    if action == "update":  # a new endpoint has no traffic to shift
        endpoint_req["DeploymentConfig"] = guardrails.deployment_config(
            cfg.sagemaker, params["traffic_routing"], [a["AlarmName"] for a in alarms]
        )
    requests.validate("CreateModel", model)
    requests.validate("CreateEndpointConfig", config)
    requests.validate("UpdateEndpoint" if action == "update" else "CreateEndpoint", endpoint_req)
    return {
        "model": model,
        "endpoint_config": config,
        "alarms": alarms,
        "scaling": autoscaling.scaling_requests(cfg.sagemaker, endpoint=endpoint),
        "endpoint": endpoint_req,
        "previous_config": gate["endpoint_plan"]["previous_config"],
        "action": action,
    }


def verify_endpoint(client, endpoint: str, expected_config: str) -> dict:
    result = decide.verify_live_config(
        endpoint, describe_or_none(client.describe_endpoint, EndpointName=endpoint), expected_config
    )
    log.info(result.reason)
    return asdict(result)


def smoke_test_endpoint(
    cfg: PipelineConfig, runtime, s3, *, endpoint: str, validation_uri: str, training_accuracy: float
) -> dict:
    from plugins.tlpipe.deploy.smoke_test import run_smoke_test

    sm = cfg.sagemaker
    report = run_smoke_test(
        runtime,
        s3,
        endpoint=endpoint,
        validation_uri=validation_uri,
        images=sm.smoke_test_images,
        training_accuracy=training_accuracy,
        tolerance=sm.smoke_test_accuracy_tolerance,
        latency_bound_ms=sm.smoke_test_latency_ms,
        log=log.info,
    )
    log.info(report.reason)
    return report.as_dict()
