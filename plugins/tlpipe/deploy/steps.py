"""What the deploy DAG's Python tasks do: read and change SageMaker/S3 state around the decisions in
``plugins.tlpipe.deploy.decisions``. Clients come from Airflow connections (``s3.aws_conn_id``, which may carry an
``endpoint_url``) and are created only when a task runs.

    prepare_finetune     Params + triggering event -> inputs, resource names, the CreateTrainingJob request
    gate_deployment      live endpoint state + training metrics -> deploy or not, and the rollback target
    deploy_requests      CreateModel / CreateEndpointConfig / CreateEndpoint requests of this run
    verify_endpoint      the endpoint is InService on this run's config
    smoke_test_endpoint  validation images through sagemaker-runtime
    rollback_endpoint    back to the previous config (or delete the endpoint this run created)
    apply_retention      delete models and endpoint configs beyond the newest N (never live or previous)
    write_lineage        the lineage record in S3
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any, Callable, Mapping

from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.deploy import decisions as decide
from plugins.tlpipe.deploy import sagemaker_requests as requests
from plugins.tlpipe.deploy.operators import describe_or_none

log = logging.getLogger(__name__)

ENDPOINT_WAIT_SECONDS = 3600


# -- clients --------------------------------------------------------------------------------------------------
def sagemaker_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    return SageMakerHook(aws_conn_id=conn_id).conn


def runtime_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    # Retries would hide a failing model and blur the latency the smoke test measures.
    return AwsBaseHook(
        aws_conn_id=conn_id,
        client_type="sagemaker-runtime",
        config={"retries": {"max_attempts": 1, "mode": "standard"}, "read_timeout": 70},
    ).conn


def s3_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


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
    hyperparameters = {**dict(params.get("hyperparameters") or {}), "compare_scratch": bool(params["compare_scratch"])}
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
    return {
        "inputs": inputs.model_dump(),
        "names": asdict(names),
        "endpoint": params["endpoint_name"],
        "training_request": request,
    }


def training_outcome(training: Mapping[str, Any]) -> dict:
    """The finetune operator's XCom -> the job's name, artifact and FinalMetricDataList metrics."""
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


def gate_deployment(client, *, endpoint: str, metrics: Mapping[str, float], threshold: float) -> dict:
    state = inspect_endpoint(client, endpoint)
    log.info(state["plan"]["reason"])
    decision = decide.quality_gate(metrics, threshold, state["live_accuracy"], state["live_model"])
    log.info(decision.reason)
    return {
        "deploy": decision.deploy,
        "reason": decision.reason,
        "decision": decision.as_dict(),
        "endpoint_plan": state["plan"],
    }


# -- deploying ------------------------------------------------------------------------------------------------
def deploy_requests(
    cfg: PipelineConfig,
    params: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    gate: Mapping[str, Any],
    dag_id: str,
    run_id: str,
) -> dict:
    names, inputs, endpoint = prepared["names"], prepared["inputs"], prepared["endpoint"]
    model_tags = {
        decide.ACCURACY_TAG: gate["decision"]["accuracy"],
        decide.ENDPOINT_TAG: endpoint,
        "training-job": outcome["job"],
        "dag-id": dag_id,
        "run-id": run_id,
        "pretrained-sha256": inputs.get("model_sha256"),
        "dataset-fingerprint": inputs.get("dataset_fingerprint"),
    }
    model = requests.model_request(
        cfg.sagemaker, model_name=names["model"], model_data_url=outcome["model_artifacts"], tag_values=model_tags
    )
    config = requests.endpoint_config_request(
        config_name=names["endpoint_config"],
        model_name=names["model"],
        instance_type=params["serving_instance_type"],
        instance_count=params["serving_instance_count"],
        tag_values={decide.ENDPOINT_TAG: endpoint, "run-id": run_id, "training-job": outcome["job"]},
    )
    endpoint_req = requests.endpoint_request(endpoint_name=endpoint, config_name=names["endpoint_config"])
    requests.validate("CreateModel", model)
    requests.validate("CreateEndpointConfig", config)
    requests.validate("CreateEndpoint", endpoint_req)
    return {
        "model": model,
        "endpoint_config": config,
        "endpoint": endpoint_req,
        "previous_config": gate["endpoint_plan"]["previous_config"],
        "action": gate["endpoint_plan"]["action"],
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


# -- rollback -------------------------------------------------------------------------------------------------
class RollbackFailed(RuntimeError):
    pass


def wait_settled(client, endpoint: str, delay: float, timeout: float) -> dict | None:
    """DescribeEndpoint once the endpoint is no longer Creating/Updating/…; None when it does not exist."""
    from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

    retrying = Retrying(
        wait=wait_fixed(delay),
        stop=stop_after_delay(timeout),
        retry=retry_if_result(lambda d: d is not None and d["EndpointStatus"] in decide.TRANSITIONAL),
        retry_error_callback=lambda state: state.outcome.result(),
    )  # still changing: the caller decides
    return retrying(describe_or_none, client.describe_endpoint, EndpointName=endpoint)


def _wait(client, waiter: str, endpoint: str, delay: float, timeout: float) -> None:
    client.get_waiter(waiter).wait(
        EndpointName=endpoint,
        WaiterConfig={"Delay": max(1, int(delay)), "MaxAttempts": max(1, math.ceil(timeout / max(delay, 1)))},
    )


def rollback_endpoint(
    client,
    *,
    endpoint: str,
    previous_config: str | None,
    new_config: str,
    delay: float,
    timeout: float = ENDPOINT_WAIT_SECONDS,
) -> dict:
    """Restore the endpoint to its state before this run; raises ``RollbackFailed`` when that does not work."""
    description = wait_settled(client, endpoint, delay, timeout)
    plan = decide.plan_rollback(endpoint, description, previous_config, new_config)
    log.info(plan.reason)
    if plan.action == "wait":
        raise RollbackFailed(f"endpoint {endpoint} did not settle within {timeout:.0f} s: {plan.reason}")
    try:
        if plan.action == "update":
            client.update_endpoint(EndpointName=endpoint, EndpointConfigName=plan.target_config)
            _wait(client, "endpoint_in_service", endpoint, delay, timeout)
        elif plan.action == "recreate":
            client.delete_endpoint(EndpointName=endpoint)
            _wait(client, "endpoint_deleted", endpoint, delay, timeout)
            client.create_endpoint(EndpointName=endpoint, EndpointConfigName=plan.target_config)
            _wait(client, "endpoint_in_service", endpoint, delay, timeout)
        elif plan.action == "delete":
            client.delete_endpoint(EndpointName=endpoint)
            _wait(client, "endpoint_deleted", endpoint, delay, timeout)
    except Exception as err:  # a waiter's or the API's error: the endpoint is not restored
        raise RollbackFailed(f"rollback of endpoint {endpoint} ({plan.action}) failed: {err}") from err
    after = describe_or_none(client.describe_endpoint, EndpointName=endpoint)
    if plan.target_config:
        check = decide.verify_live_config(endpoint, after, plan.target_config)
        if not check.ok:
            raise RollbackFailed(
                f"rollback of endpoint {endpoint} did not restore {plan.target_config}: {check.reason}"
            )
    return {
        **asdict(plan),
        "final_status": (after or {}).get("EndpointStatus"),
        "final_config": (after or {}).get("EndpointConfigName"),
    }


# -- retention ------------------------------------------------------------------------------------------------
def _ours(client, arn: str, endpoint: str) -> bool:
    return requests.tag_dict(list_tags(client, arn)).get(decide.ENDPOINT_TAG) == endpoint


def _paginate(client, operation: str, key: str, **kwargs) -> list[dict]:
    out, token = [], None
    while True:
        page = getattr(client, operation)(**kwargs, **({"NextToken": token} if token else {}))
        out.extend(page.get(key, []))
        token = page.get("NextToken")
        if not token:
            return out


def apply_retention(client, *, endpoint: str, prefix: str, keep_last: int, protected_configs: list[str | None]) -> dict:
    """Delete this endpoint's endpoint configs and models beyond the newest ``keep_last``.

    Never deleted: the live config, the configs in ``protected_configs`` (previous, this run's), and the
    models that any kept config uses. Only resources named ``<prefix>-ft-…`` and tagged with this endpoint
    are considered, so other endpoints' and hand-made resources are left alone.
    """
    stem = f"{prefix}-ft-"
    live = describe_or_none(client.describe_endpoint, EndpointName=endpoint)
    protected = {c for c in protected_configs if c} | ({live["EndpointConfigName"]} if live else set())
    configs = [
        c
        for c in _paginate(client, "list_endpoint_configs", "EndpointConfigs", NameContains=stem)
        if c["EndpointConfigName"].startswith(stem) and _ours(client, c["EndpointConfigArn"], endpoint)
    ]
    config_plan = decide.plan_retention(
        [decide.Resource(c["EndpointConfigName"], c["CreationTime"]) for c in configs], keep_last, protected
    )
    protected_models = set()
    for name in config_plan.keep:
        found = describe_or_none(client.describe_endpoint_config, EndpointConfigName=name)
        protected_models |= {v["ModelName"] for v in (found or {}).get("ProductionVariants", [])}
    models = [
        m
        for m in _paginate(client, "list_models", "Models", NameContains=stem)
        if m["ModelName"].startswith(stem) and _ours(client, m["ModelArn"], endpoint)
    ]
    model_plan = decide.plan_retention(
        [decide.Resource(m["ModelName"], m["CreationTime"]) for m in models], keep_last, protected_models
    )
    # Configs first: a model is never deleted while a config that names it exists. A resource someone else
    # deleted in between is not an error (the call answers ValidationException, as for a describe).
    for name in config_plan.delete:
        if describe_or_none(client.delete_endpoint_config, EndpointConfigName=name) is not None:
            log.info("deleted endpoint config %s", name)
    for name in model_plan.delete:
        if describe_or_none(client.delete_model, ModelName=name) is not None:
            log.info("deleted model %s", name)
    log.info("retention for %s: kept configs %s, models %s", endpoint, config_plan.keep, model_plan.keep)
    return {"endpoint_configs": asdict(config_plan), "models": asdict(model_plan)}


# -- lineage --------------------------------------------------------------------------------------------------
def write_lineage(exporter, endpoint: str, job: str, record: Mapping[str, Any]) -> str:
    key = decide.lineage_key(exporter.cfg.key, endpoint, job)
    exporter.ensure_bucket()
    exporter.put_json(key, dict(record), once=False)
    return exporter.uri(key)


# -- the run's outcome ----------------------------------------------------------------------------------------
def endpoint_lock(cfg: PipelineConfig, endpoint: str, owner: Mapping[str, Any]):
    from plugins.tlpipe.deploy.lock import EndpointLock

    key = cfg.s3.key("locks", "endpoints", f"{endpoint}.json")
    return EndpointLock(s3_client(cfg.s3.aws_conn_id), cfg.s3.bucket, key, owner)


def deployment_facts(results: Mapping[str, Any]) -> dict:
    """Names and ARNs of what this run created, from the deploy tasks' XComs (absent ones stay None)."""
    reqs = results.get("requests") or {}
    model = (results.get("model") or {}).get("Model") or {}
    config = (results.get("endpoint_config") or {}).get("EndpointConfig") or {}
    endpoint = (results.get("endpoint") or {}).get("Endpoint") or {}
    variant = ((reqs.get("endpoint_config") or {}).get("ProductionVariants") or [{}])[0]
    return {
        "model": (reqs.get("model") or {}).get("ModelName"),
        "model_arn": model.get("ModelArn"),
        "endpoint_config": (reqs.get("endpoint_config") or {}).get("EndpointConfigName"),
        "endpoint_config_arn": config.get("EndpointConfigArn"),
        "instance_type": variant.get("InstanceType"),
        "instance_count": variant.get("InitialInstanceCount"),
        "endpoint": (reqs.get("endpoint") or {}).get("EndpointName"),
        "endpoint_arn": endpoint.get("EndpointArn"),
        "action": reqs.get("action"),
        "previous_config": reqs.get("previous_config"),
    }


def _record(
    exporter,
    status: str,
    reason: str,
    results: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    dag_id: str,
    run_id: str,
    rollback: Mapping[str, Any] | None = None,
) -> dict:
    gate = results.get("gate") or {}
    deployed = gate.get("deploy")
    record = decide.lineage_record(
        status=status,
        reason=reason,
        dag_id=dag_id,
        run_id=run_id,
        inputs=prepared["inputs"],
        training=(results.get("training") or {}).get("Training") or {},
        metrics=outcome["metrics"],
        gate=gate.get("decision"),
        deployment=deployment_facts(results) if deployed else {"endpoint": prepared["endpoint"]},
        smoke_test=results.get("smoke"),
        rollback=rollback,
    )
    uri = write_lineage(exporter, prepared["endpoint"], outcome["job"], record)
    summary = decide.run_summary(record, uri)
    log.info("run summary: %s", summary)
    return summary


def record_run(
    exporter,
    results: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    dag_id: str,
    run_id: str,
) -> dict:
    """After a deployment that passed its smoke test, or a gate that said no: lineage in S3, the summary."""
    gate = results.get("gate") or {}
    if gate.get("deploy"):
        status, reason = (
            "deployed",
            "; ".join(
                r
                for r in (
                    gate.get("reason"),
                    (results.get("verify") or {}).get("reason"),
                    (results.get("smoke") or {}).get("reason"),
                )
                if r
            ),
        )
    else:
        status, reason = "rejected", gate.get("reason") or "the quality gate did not pass"
    return _record(exporter, status, reason, results, prepared=prepared, outcome=outcome, dag_id=dag_id, run_id=run_id)


def failure_reason(states: Mapping[str, str], results: Mapping[str, Any]) -> str:
    """Which deploy task failed and why (verify and smoke test leave their result in XCom)."""
    reasons = []
    for task_id, state in states.items():
        if state != "failed":
            continue
        key = task_id.rsplit(".", 1)[-1]
        detail = (results.get({"verify_endpoint": "verify", "smoke_test": "smoke"}.get(key, "")) or {}).get("reason")
        reasons.append(f"{task_id} failed" + (f": {detail}" if detail else " (see its log)"))
    return "; ".join(reasons) or "a deploy task did not succeed"


def rollback_run(
    client,
    exporter,
    results: Mapping[str, Any],
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    states: Mapping[str, str],
    dag_id: str,
    run_id: str,
    poll: float,
) -> tuple[dict, str]:
    """Restore the endpoint, record the run, and return (summary, the message the run fails with)."""
    reason = failure_reason(states, results)
    log.error("deployment failed: %s", reason)
    facts = deployment_facts(results)
    try:
        done = rollback_endpoint(
            client,
            endpoint=prepared["endpoint"],
            previous_config=facts["previous_config"],
            new_config=prepared["names"]["endpoint_config"],
            delay=poll,
        )
        status = "rolled_back" if done["action"] != "none" else "failed"
        message = f"deployment failed: {reason}; {done['reason']}"
    except RollbackFailed as err:
        done = {"action": "failed", "reason": str(err)}
        status, message = "rollback_failed", f"deployment failed: {reason}; {err}"
    summary = _record(
        exporter,
        status,
        message,
        results,
        prepared=prepared,
        outcome=outcome,
        dag_id=dag_id,
        run_id=run_id,
        rollback=done,
    )
    return summary, message
