"""
### Transfer learning and deployment

Fine-tunes the pretrained model published by `general_pretraining` on the held-out domain classes in a
SageMaker training job and deploys it to a SageMaker real-time endpoint.

**Triggers**: every event on the Asset **`pretrained-model`** (model and domain-data URIs from the event's
`extra`); a manual run with Params; `POST /api/v2/dags/transfer_learning_deploy/dagRuns` with
`{"logical_date": null, "conf": {...}}`. Every Param has a JSON schema: a conf that violates one is refused
(HTTP 400) before a run exists. Empty `base_model_uri`/`domain_dataset_uri` take the triggering event's
URIs, else the last exported model's (`pretrained/latest.json`).

**Tasks**: `prepare` (inputs, deterministic names, the validated CreateTrainingJob request) → `finetune`
(SageMakerTrainingOperator; a retry reuses the run's job; killing the task stops it), or with Param `tuning`
`tune` (SageMakerTuningOperator over `sagemaker.tuning.ranges`) → `read_metrics` → `acquire_endpoint_lock` →
`quality_gate` (accuracy ≥ `quality_threshold` and ≥ the live model's, the scratch baseline judged by
`baseline_policy`) → `registration_request` → `register_model` (a Model Registry version, approved or rejected
by the gate) → `approval` → `wait_for_approval` (Param `approval: manual`: until a person approves) →
`deploy.*` (model → endpoint config with data capture → `create_alarms` (5xx errors, p99 latency) and
`release_autoscaling` (only when an update changes the instance type) → `shadow_test` (Param `shadow_test`:
the new model shadows the live one first; promoted only when it agrees) → create, or update blue/green with
Param `traffic_routing`, SageMaker rolling back on an alarm → verify it serves the new config →
`autoscale_endpoint` (`sagemaker.autoscaling`) → smoke test) → `record_lineage` (S3) → `apply_retention`.
Any failure in `deploy.*` runs `rollback` (the previous config and scalable target, or delete the endpoint
this run created) and fails the run with the reason. `release_endpoint_lock` is the teardown.

**Run summary**: XCom `summary` of `record_lineage` (deployed or rejected) or `rollback`; the lineage record
is `s3://<bucket>/<prefix>/lineage/<endpoint>/<training job>.json`; beside it, `<training job>/` holds the
pretraining run's TensorBoard logs (copied from the checkpoint store) and `report.md`, which the fine-tune
task's "Run artifacts" link opens.

**One deploy per endpoint**: `max_active_runs=1`, and an S3 lock object per endpoint
(`<prefix>/locks/endpoints/<endpoint>.json`) held from the gate to the teardown.

**Deferrable**: the training and endpoint operators defer to the triggerer when Airflow's
`[operators] default_deferrable` is true (`AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE=true`); otherwise they
poll from the worker.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import TaskGroup, TriggerRule, conf, dag, setup, task, teardown
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from plugins.tlpipe import aws
from plugins.tlpipe.assets import pretrained_model_asset
from plugins.tlpipe.config import get_config
from plugins.tlpipe.deploy import closing, registry, shadow, steps
from plugins.tlpipe.deploy import decisions as decide
from plugins.tlpipe.deploy import operators as ops
from plugins.tlpipe.deploy import release_steps as release
from plugins.tlpipe.deploy.params import deploy_params
from plugins.tlpipe.deploy.run_record import SOURCES, DeployRunResults
from plugins.tlpipe.deploy.sensors import ModelApprovalSensor
from training.contracts import PRIMARY_METRIC

cfg = get_config()
PRETRAINED_MODEL = pretrained_model_asset(cfg)
AWS = {"aws_conn_id": cfg.s3.aws_conn_id}
POLL = max(1, int(cfg.airflow.sensor_poke_seconds))
DEFERRABLE = conf.getboolean("operators", "default_deferrable", fallback=False)
BUILD, VERIFY, SMOKE = (SOURCES[fact][0] for fact in ("requests", "verify", "smoke"))
DEPLOY_TASKS = [f"deploy.{t}" for t in ("create_model", "create_endpoint_config", "create_or_update_endpoint")]
DEPLOY_TASKS += ["deploy.shadow_test", VERIFY, "deploy.autoscale_endpoint", SMOKE]


def _exporter():
    from plugins.tlpipe.pretraining.export import S3Exporter

    return S3Exporter(get_config().s3)


def _sagemaker():
    return aws.sagemaker_client(get_config().s3.aws_conn_id)


def _owner(dag_run) -> dict:
    return {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id}


def _checkpoint_store():
    """The on-prem checkpoint store, where the pretraining run's TensorBoard logs are."""
    from plugins.tlpipe.pretraining.sensors import checkpoint_store

    cfg = get_config()
    return checkpoint_store(cfg.checkpoints.root, cfg.checkpoints.conn_id)


def _results(ti) -> DeployRunResults:
    """The run's facts (its tasks' XComs), read once for the lineage record and the rollback."""
    return DeployRunResults.from_xcoms(lambda task_id, key: ti.xcom_pull(task_ids=task_id, key=key))


# -- tasks ---------------------------------------------------------------------------------------------------
@task(multiple_outputs=True)
def prepare(params: dict, dag_run=None, triggering_asset_events=None) -> dict:
    try:
        return steps.prepare_finetune(
            get_config(),
            params,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            event=decide.event_extra(triggering_asset_events),
            read_latest=lambda: _exporter().read_latest(),
        )
    except ValueError as err:  # no inputs, or a request that must not be sent: a retry cannot help
        raise AirflowFailException(str(err)) from None


@task.branch
def choose_finetune(prepared: dict) -> str:
    return steps.finetune_task(prepared)


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def read_metrics(prepared: dict, ti=None) -> dict:
    training, tuned = ti.xcom_pull(task_ids="finetune"), ti.xcom_pull(task_ids="tune")
    try:
        if prepared.get("model_package_arn"):
            return steps.version_outcome(_sagemaker(), prepared["model_package_arn"])
        return steps.training_outcome(training, tuned, _sagemaker())
    except ValueError as err:  # a tuning job with no usable training job: nothing to deploy
        raise AirflowFailException(str(err)) from None


@setup
def acquire_endpoint_lock(endpoint: str, dag_run=None) -> str:
    return closing.endpoint_lock(get_config(), endpoint, _owner(dag_run)).acquire()


@teardown
def release_endpoint_lock(endpoint: str, dag_run=None) -> bool:
    return closing.endpoint_lock(get_config(), endpoint, _owner(dag_run)).release()


@task
def quality_gate(outcome: dict, endpoint: str, params: dict, ti=None) -> dict:
    try:
        gate = steps.gate_deployment(
            _sagemaker(),
            endpoint=endpoint,
            metrics=outcome["metrics"],
            threshold=params["quality_threshold"],
            baseline_policy=params["baseline_policy"],
            baseline_margin=params["baseline_margin"],
            named_version=outcome.get("model_package_arn"),
        )
    except decide.MissingMetric as err:
        raise AirflowFailException(str(err)) from None
    ti.xcom_push(key="gate", value=gate)
    return gate


@task
def registration_request(prepared: dict, outcome: dict, gate: dict, params: dict, dag_run=None) -> dict:
    try:
        return steps.registration_request(
            get_config(),
            params,
            prepared=prepared,
            outcome=outcome,
            gate=gate,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
        )
    except ValueError as err:
        raise AirflowFailException(str(err)) from None


@task.branch
def approval(version_arn: str, gate: dict, ti=None) -> str:
    ti.xcom_push(key="version", value=steps.settle_approval(_sagemaker(), version_arn, gate))
    return "wait_for_approval" if gate["deploy"] else "skip_deployment"


@task(multiple_outputs=True)
def build_requests(prepared: dict, outcome: dict, version_arn: str, params: dict, ti=None, dag_run=None) -> dict:
    try:
        return steps.deploy_requests(
            get_config(),
            params,
            prepared=prepared,
            outcome=outcome,
            gate=ti.xcom_pull(task_ids="quality_gate", key="gate"),
            version=registry.approved_version(_sagemaker(), version_arn),
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
        )
    except ValueError as err:
        raise AirflowFailException(str(err)) from None


@task
def release_autoscaling(request: dict, config: dict) -> dict | None:
    return release.release_autoscaling(get_config(), request, config)


@task
def autoscale_endpoint(scaling: dict | None) -> dict | None:
    return release.autoscale(get_config(), scaling)


@task
def create_alarms(alarms: list) -> list[str]:
    return release.put_alarms(get_config(), alarms)


@task(retries=0)
def shadow_test(requests: dict, outcome: dict, prepared: dict, params: dict, ti=None) -> dict:
    validation = outcome.get("domain_validation_uri") or prepared["inputs"]["domain_validation_uri"]
    try:
        result = release.shadow_test(get_config(), params, requests, validation, POLL)
    except shadow.ShadowTestError as err:
        raise AirflowFailException(str(err)) from None
    ti.xcom_push(key="result", value=result)
    if not result["passed"]:
        raise AirflowFailException(result["reason"])
    return result


@task(retries=0)
def verify_endpoint(request: dict, ti=None) -> dict:
    result = steps.verify_endpoint(_sagemaker(), request["EndpointName"], request["EndpointConfigName"])
    ti.xcom_push(key="result", value=result)
    if not result["ok"]:
        raise AirflowFailException(result["reason"])
    return result


@task(retries=0)
def smoke_test(request: dict, outcome: dict, prepared: dict, ti=None) -> dict:
    conn = get_config().s3.aws_conn_id
    report = steps.smoke_test_endpoint(
        get_config(),
        aws.runtime_client(conn),
        aws.s3_client(conn),
        endpoint=request["EndpointName"],
        validation_uri=outcome.get("domain_validation_uri") or prepared["inputs"]["domain_validation_uri"],
        training_accuracy=outcome["metrics"][PRIMARY_METRIC],
    )
    ti.xcom_push(key="result", value=report)
    if not report["passed"]:
        raise AirflowFailException(report["reason"])
    return report


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def record_lineage(prepared: dict, outcome: dict, ti=None, dag_run=None) -> dict:
    summary = closing.record_run(
        _exporter(),
        _results(ti),
        prepared=prepared,
        outcome=outcome,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        checkpoint_store=_checkpoint_store(),
    )
    ti.xcom_push(key="summary", value=summary)
    return summary


@task
def apply_retention(prepared: dict, ti=None) -> dict:
    gate = ti.xcom_pull(task_ids="quality_gate", key="gate") or {}
    return closing.apply_retention(
        _sagemaker(),
        endpoint=prepared["endpoint"],
        prefix=get_config().sagemaker.resource_prefix,
        keep_last=get_config().sagemaker.keep_last,
        protected_configs=[
            (gate.get("endpoint_plan") or {}).get("previous_config"),
            prepared["names"]["endpoint_config"],
        ],
    )


@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
def rollback(prepared: dict, outcome: dict, ti=None, dag_run=None) -> None:
    if ti.xcom_pull(task_ids=BUILD) is None:
        raise AirflowSkipException("nothing was deployed: no rollback needed")
    states = ti.get_task_states(dag_id=dag_run.dag_id, task_ids=DEPLOY_TASKS, run_ids=[dag_run.run_id])
    summary, message = closing.rollback_run(
        _sagemaker(),
        _exporter(),
        _results(ti),
        prepared=prepared,
        outcome=outcome,
        states=states.get(dag_run.run_id, {}),
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        poll=POLL,
        checkpoint_store=_checkpoint_store(),
    )
    ti.xcom_push(key="summary", value=summary)
    # An update that changed the instance type deregistered the variant's scalable target: put it back.
    release.restore_autoscaling(get_config(), prepared["endpoint"], ti.xcom_pull(task_ids="deploy.release_autoscaling"))
    raise AirflowFailException(message)


@dag(
    dag_id="transfer_learning_deploy",
    schedule=[PRETRAINED_MODEL],
    start_date=datetime.fromisoformat(cfg.airflow.start_date),
    catchup=False,
    max_active_runs=1,
    params=deploy_params(cfg),
    doc_md=__doc__,
    tags=["tlpipe", "finetune", "deploy", cfg.profile],
    default_args={
        "owner": "tlpipe",
        "retries": cfg.airflow.retries,
        "retry_delay": timedelta(seconds=cfg.airflow.retry_delay_seconds),
    },
)
def transfer_learning_deploy():
    prepared = prepare()

    finetune = ops.FinetuneTrainingOperator(
        task_id="finetune",
        config=prepared["training_request"],
        run_artifacts=prepared["run_artifacts"],
        print_log=True,
        check_interval=POLL,
        max_ingestion_time=cfg.sagemaker.training_max_runtime_seconds + 1800,
        deferrable=DEFERRABLE,
        **AWS,
    )

    tune = ops.FinetuneTuningOperator(
        task_id="tune",
        config=prepared["tuning_request"],
        check_interval=POLL,
        max_ingestion_time=cfg.sagemaker.training_max_runtime_seconds * cfg.sagemaker.tuning.max_jobs + 1800,
        deferrable=DEFERRABLE,
        **AWS,
    )
    choice = choose_finetune(prepared)
    outcome = read_metrics(prepared)
    choice >> [finetune, tune] >> outcome
    choice >> outcome  # a named Model Registry version: no fine-tune

    lock = acquire_endpoint_lock(prepared["endpoint"])
    gate = quality_gate(outcome, prepared["endpoint"])
    register = ops.RegisterModelVersionOperator(
        task_id="register_model", config=registration_request(prepared, outcome, gate), **AWS
    )
    approve = approval(register.output, gate)
    approved = ModelApprovalSensor(
        task_id="wait_for_approval",
        model_package_arn=register.output,
        poke_interval=POLL,
        timeout=cfg.sagemaker.registry.approval_timeout_minutes * 60,
        deferrable=DEFERRABLE,
        **AWS,
    )
    skip = EmptyOperator(task_id="skip_deployment")

    with TaskGroup("deploy"):
        requests = build_requests(prepared, outcome, approved.output)
        model = ops.DeployModelOperator(task_id="create_model", config=requests["model"], **AWS)
        endpoint_config = ops.DeployEndpointConfigOperator(
            task_id="create_endpoint_config", config=requests["endpoint_config"], **AWS
        )
        endpoint = ops.DeployEndpointOperator(
            task_id="create_or_update_endpoint",
            config=requests["endpoint"],
            operation="create",
            check_interval=POLL,
            max_ingestion_time=steps.ENDPOINT_WAIT_SECONDS,
            deferrable=DEFERRABLE,
            **AWS,
        )

        alarms = create_alarms(requests["alarms"])
        released = release_autoscaling(requests["endpoint"], requests["endpoint_config"])
        shadowed = shadow_test(requests, outcome, prepared)
        verified = verify_endpoint(requests["endpoint"])
        scaled = autoscale_endpoint(requests["scaling"])
        smoked = smoke_test(requests["endpoint"], outcome, prepared)
        model >> endpoint_config >> [alarms, released] >> shadowed >> endpoint >> verified >> scaled >> smoked

    lineage = record_lineage(prepared, outcome)
    retention = apply_retention(prepared)
    undo = rollback(prepared, outcome)
    unlock = release_endpoint_lock(prepared["endpoint"])

    outcome >> lock >> gate
    approve >> [approved, skip]
    [smoked, skip] >> lineage >> retention
    [shadowed, endpoint, verified, scaled, smoked] >> undo
    [retention, undo] >> unlock
    lock >> unlock


transfer_learning_deploy()
