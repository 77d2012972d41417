"""
### General pretraining

Curates an ImageFolder tree, pretrains the general image model with Horovod, exports the best checkpoint and
the held-out domain classes to S3, and publishes the Asset **`pretrained-model`** (URIs in the event's `extra`),
which schedules `transfer_learning_deploy`.

**Triggers**: the configured schedule (default weekly), a manual run with Params, or
`POST /api/v2/dags/general_pretraining/dagRuns` with `{"logical_date": null, "conf": {...}}`. Every Param has a
JSON schema; a conf that violates one is refused (HTTP 400) before a run exists.

**Tasks**: `prepare` (paths, TrainingSpec, MPIJob of this run) → `curate` (a subprocess locally, a pod beside the
data in production) → `plan_training` (skips when the dataset fingerprint and training parameters match the last
exported model, and says so) → one of `launch.local` | `launch.pod` | `launch.mpijob.*` → `wait_for_best_checkpoint`
→ `export_model` → `upload_domain_dataset` → `publish_pretrained_model`.

**Launchers** (Param `launcher`): `local` (horovodrun subprocess), `pod` (one GPU worker, KubernetesPodOperator),
`mpijob` (Kubeflow MPIJob v2beta1, several workers), `auto` (local in the local profile, else pod or mpijob by
worker count). All run the same `horovodrun … python -m training.pretrain …` argv.

**Pool**: training tasks run in the pool `airflow.gpu_pool` of `config/pipeline.yaml` (default `gpu`); create it
once with `airflow pools set gpu 1 "GPU training"` (slots = concurrent trainings the cluster can hold).

**Checkpoints**: one directory per run under `checkpoints.root`; a retry of the training task resumes there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import TaskGroup, TriggerRule, dag, get_current_context, task

from plugins.tlpipe.assets import pretrained_model_asset
from plugins.tlpipe.config import get_config
from plugins.tlpipe.pretraining import steps
from plugins.tlpipe.pretraining.launchers import (
    CreateMPIJobOperator,
    DeleteMPIJobOperator,
    LocalCommandOperator,
    LocalTrainingOperator,
    TrainingPodOperator,
    curate_pod_operator,
)
from plugins.tlpipe.pretraining.params import pretraining_params
from plugins.tlpipe.pretraining.sensors import BestCheckpointSensor, MPIJobSensor, sensor_defaults

cfg = get_config()
PRETRAINED_MODEL = pretrained_model_asset(cfg)
SENSING = sensor_defaults(cfg.airflow.sensor_poke_seconds, cfg.airflow.sensor_timeout_hours, cfg.airflow.sensor_mode)
TRAINING = {
    "pool": cfg.airflow.gpu_pool,
    "pool_slots": cfg.airflow.gpu_pool_slots,
    "execution_timeout": timedelta(hours=cfg.airflow.training_timeout_hours),
}


def _exporter():
    from plugins.tlpipe.pretraining.export import S3Exporter

    return S3Exporter(get_config().s3)


# -- tasks ---------------------------------------------------------------------------------------------------
@task(multiple_outputs=True)
def prepare(params: dict, dag_run=None) -> dict:
    return steps.prepare_run(get_config(), params, dag_run.dag_id, dag_run.run_id)


@task.branch
def plan_training(prepared: dict) -> str:
    follow, dataset = steps.plan_training(prepared, _exporter())
    get_current_context()["ti"].xcom_push(key="dataset", value=dataset)
    return follow


@task
def export_model(best: dict, prepared: dict) -> dict:
    return steps.export_model(best, prepared, _exporter(), get_config().checkpoints.conn_id)


@task
def upload_domain_dataset(prepared: dict) -> dict:
    return _exporter().upload_domain(prepared["manifest_path"])


@task(outlets=[PRETRAINED_MODEL])
def publish_pretrained_model(
    prepared: dict, best: dict, exported: dict, domain: dict, dag_run=None, ti=None, outlet_events=None
) -> dict:
    dataset = ti.xcom_pull(task_ids="plan_training", key="dataset")
    extra = steps.publish_record(
        prepared=prepared,
        best=best,
        exported=exported,
        domain=domain,
        dataset=dataset,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
    )
    _exporter().write_latest(extra)
    outlet_events[PRETRAINED_MODEL].extra = extra
    return extra


@dag(
    dag_id="general_pretraining",
    schedule=cfg.airflow.schedule,
    start_date=datetime.fromisoformat(cfg.airflow.start_date),
    catchup=False,
    max_active_runs=1,
    params=pretraining_params(cfg),
    doc_md=__doc__,
    tags=["tlpipe", "pretraining", cfg.profile],
    default_args={
        "owner": "tlpipe",
        "retries": cfg.airflow.retries,
        "retry_delay": timedelta(seconds=cfg.airflow.retry_delay_seconds),
    },
)
def general_pretraining():
    run = prepare()

    if cfg.airflow.curate_runner == "pod":
        curate = curate_pod_operator(task_id="curate", argv=run["curate_argv"], kube=cfg.kubernetes)
    else:
        curate = LocalCommandOperator(task_id="curate", argv=run["curate_argv"])

    plan = plan_training(run)
    skip = EmptyOperator(task_id=steps.SKIP_TASK)

    with TaskGroup(steps.LAUNCH_GROUP):
        local = LocalTrainingOperator(
            task_id="local", spec=run["training"], checkpoint_conn_id=cfg.checkpoints.conn_id, **TRAINING
        )
        pod = TrainingPodOperator(task_id="pod", spec=run["training"], kube=cfg.kubernetes, **TRAINING)
        with TaskGroup("mpijob"):
            create = CreateMPIJobOperator(
                task_id="create",
                yaml_conf=run["mpijob_yaml"],
                kubernetes_conn_id=cfg.kubernetes.conn_id,
                namespace=cfg.kubernetes.namespace,
            )
            watch = MPIJobSensor(
                task_id="watch",
                name=run["mpijob_name"],
                namespace=cfg.kubernetes.namespace,
                kubernetes_conn_id=cfg.kubernetes.conn_id,
                **TRAINING,
                **SENSING,
            )
            delete = DeleteMPIJobOperator(
                task_id="delete",
                yaml_conf=run["mpijob_yaml"],
                kubernetes_conn_id=cfg.kubernetes.conn_id,
                namespace=cfg.kubernetes.namespace,
            )
            create >> watch >> delete.as_teardown(setups=create)

    best = BestCheckpointSensor(
        task_id="wait_for_best_checkpoint",
        # A template, not an XComArg: a dependency on prepare would count as the "one success" when every
        # launcher was skipped.
        checkpoint_uri="{{ ti.xcom_pull(task_ids='prepare', key='checkpoint_uri') }}",
        conn_id=cfg.checkpoints.conn_id,
        expected_manifest_sha256="{{ ti.xcom_pull(task_ids='plan_training', key='dataset')['manifest_sha256'] }}",
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        **SENSING,
    )

    exported = export_model(best.output, run)
    domain = upload_domain_dataset(run)
    run >> curate >> plan >> [skip, local, pod, create]
    [local, pod, watch] >> best >> exported >> domain
    publish_pretrained_model(run, best.output, exported, domain)


general_pretraining()
