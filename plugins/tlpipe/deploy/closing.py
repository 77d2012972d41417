"""Closing a deploy run once the endpoint has been tried: roll back, apply retention, write the lineage record
and the run's outcome, under the endpoint lock.

    rollback_endpoint    back to the previous config (or delete the endpoint this run created)
    apply_retention      delete models and endpoint configs beyond the newest N (never live or previous)
    write_lineage        the lineage record in S3
    record_run           the run's record and summary; rollback_run the same after a rollback
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any, Mapping

from plugins.tlpipe.aws import describe_or_none, paginate, s3_client
from plugins.tlpipe.config import PipelineConfig
from plugins.tlpipe.deploy import decisions as decide
from plugins.tlpipe.deploy import sagemaker_requests as requests
from plugins.tlpipe.deploy.artifacts import upload_run_artifacts
from plugins.tlpipe.deploy.run_record import DeployRunResults
from plugins.tlpipe.deploy.steps import ENDPOINT_WAIT_SECONDS, list_tags

log = logging.getLogger(__name__)


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
        for c in paginate(client, "list_endpoint_configs", "EndpointConfigs", NameContains=stem)
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
        for m in paginate(client, "list_models", "Models", NameContains=stem)
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


def _record(
    exporter,
    status: str,
    reason: str,
    results: DeployRunResults,
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    dag_id: str,
    run_id: str,
    rollback: Mapping[str, Any] | None = None,
    checkpoint_store=None,
) -> dict:
    gate = results.gate or {}
    record = decide.lineage_record(
        status=status,
        reason=reason,
        dag_id=dag_id,
        run_id=run_id,
        inputs=prepared["inputs"],
        training=results.training_job,
        metrics=outcome["metrics"],
        gate=gate.get("decision"),
        deployment=results.deployment() if results.deployed else {"endpoint": prepared["endpoint"]},
        smoke_test=results.smoke,
        shadow_test=results.shadow,
        rollback=rollback,
        tuning=outcome.get("tuning"),
        model_package=results.registration,
    )
    if checkpoint_store is not None:
        key = decide.run_artifacts_key(exporter.cfg.key, prepared["endpoint"], outcome["job"])
        record["artifacts"] = upload_run_artifacts(exporter, checkpoint_store, key, record)
    uri = write_lineage(exporter, prepared["endpoint"], outcome["job"], record)
    summary = decide.run_summary(record, uri)
    log.info("run summary: %s", summary)
    return summary


def record_run(
    exporter,
    results: DeployRunResults,
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    dag_id: str,
    run_id: str,
    checkpoint_store=None,
) -> dict:
    """After a deployment that passed its smoke test, or a gate that said no: lineage in S3, the summary."""
    gate = results.gate or {}
    if results.deployed:
        reasons = (gate.get("reason"), results.reason("verify"), results.reason("smoke"))
        status, reason = "deployed", "; ".join(r for r in reasons if r)
    else:
        status, reason = "rejected", gate.get("reason") or "the quality gate did not pass"
    return _record(
        exporter,
        status,
        reason,
        results,
        prepared=prepared,
        outcome=outcome,
        dag_id=dag_id,
        run_id=run_id,
        checkpoint_store=checkpoint_store,
    )


def failure_reason(states: Mapping[str, str], results: DeployRunResults) -> str:
    """Which deploy task failed and why (verify and smoke test leave their result in XCom)."""
    reasons = []
    for task_id, state in states.items():
        if state != "failed":
            continue
        key = task_id.rsplit(".", 1)[-1]
        check = {"verify_endpoint": "verify", "smoke_test": "smoke", "shadow_test": "shadow"}.get(key)
        detail = results.reason(check) if check else None
        reasons.append(f"{task_id} failed" + (f": {detail}" if detail else " (see its log)"))
    return "; ".join(reasons) or "a deploy task did not succeed"


def rollback_run(
    client,
    exporter,
    results: DeployRunResults,
    *,
    prepared: Mapping[str, Any],
    outcome: Mapping[str, Any],
    states: Mapping[str, str],
    dag_id: str,
    run_id: str,
    poll: float,
    checkpoint_store=None,
) -> tuple[dict, str]:
    """Restore the endpoint, record the run, and return (summary, the message the run fails with)."""
    reason = failure_reason(states, results)
    log.error("deployment failed: %s", reason)
    facts = results.deployment()
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
        checkpoint_store=checkpoint_store,
    )
    return summary, message
