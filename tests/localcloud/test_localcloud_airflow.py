"""The Amazon provider's own SageMaker operators and sensors against localcloud, through ``dag.test()``.

The DAG below is the deploy path in miniature: a training job (print_log, so CloudWatch Logs are read), the
sensor on it, a model from its artifact, an endpoint config, endpoint creation, the endpoint sensor, an
update to a second config, a "create" of the now existing endpoint (which the operator turns into an
update after parsing SageMaker's error message), and an invocation through the runtime. The training
config names its role by name, so the operator resolves it through IAM.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from datetime import datetime

import pytest
from localcloud_fixtures import COLOURS, TEST_IMAGE, image_bytes, training_job_request, upload_dataset

BUCKET = "tlpipe-localcloud-airflow"
ROLE_NAME = "tlpipe-sagemaker-execution"


@pytest.fixture(scope="module")
def airflow_db(tmp_path_factory):
    """An initialised metadata DB: the one already configured in this process, or a temporary one."""
    configured = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    if configured.startswith("sqlite:///") and os.path.exists(configured[len("sqlite:///") :]):
        yield
        return
    home = tmp_path_factory.mktemp("airflow-home")
    (home / "dags").mkdir()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__FERNET_KEY": "",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__DATABASE__LOAD_DEFAULT_CONNECTIONS": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        from airflow import settings
        from airflow.utils import db

        settings.SQL_ALCHEMY_CONN = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        settings.reconfigure_orm()
        db.initdb()
        yield


def build_dag(run: str, dataset: str):
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.amazon.aws.operators.sagemaker import (
        SageMakerEndpointConfigOperator,
        SageMakerEndpointOperator,
        SageMakerModelOperator,
        SageMakerTrainingOperator,
    )
    from airflow.providers.amazon.aws.sensors.sagemaker import SageMakerEndpointSensor, SageMakerTrainingSensor
    from airflow.sdk import DAG, task

    job = f"{run}-train"
    endpoint = f"{run}-endpoint"
    training = training_job_request(job, BUCKET, dataset, version="{{ params.version }}")
    training["RoleArn"] = ROLE_NAME
    # Airflow renders templates to strings; the operator turns these back into integers.
    training["ResourceConfig"]["InstanceCount"] = "{{ 1 }}"
    artifact = "{{ ti.xcom_pull(task_ids='train')['Training']['ModelArtifacts']['S3ModelArtifacts'] }}"

    def model(name: str) -> dict:
        return {
            "ModelName": name,
            "ExecutionRoleArn": f"arn:aws:iam::123456789012:role/{ROLE_NAME}",
            "PrimaryContainer": {"Image": TEST_IMAGE, "ModelDataUrl": artifact},
        }

    def endpoint_config(name: str, model_name: str) -> dict:
        return {
            "EndpointConfigName": name,
            "ProductionVariants": [
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model_name,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": "1",
                }
            ],
        }

    with DAG(
        dag_id=f"localcloud_{run.replace('-', '_')}",
        schedule=None,
        start_date=datetime(2024, 1, 1),
        catchup=False,
        params={"version": "7"},
    ) as dag:
        train = SageMakerTrainingOperator(task_id="train", config=training, print_log=True, check_interval=1)
        sense_training = SageMakerTrainingSensor(task_id="sense_training", job_name=job, poke_interval=1)
        create_model = SageMakerModelOperator(task_id="model", config=model(f"{run}-model-a"))
        create_config = SageMakerEndpointConfigOperator(
            task_id="endpoint_config", config=endpoint_config(f"{run}-config-a", f"{run}-model-a")
        )
        create_endpoint = SageMakerEndpointOperator(
            task_id="endpoint_create",
            config={"EndpointName": endpoint, "EndpointConfigName": f"{run}-config-a"},
            operation="create",
            check_interval=1,
        )
        sense_endpoint = SageMakerEndpointSensor(task_id="sense_endpoint", endpoint_name=endpoint, poke_interval=1)
        update_endpoint = SageMakerEndpointOperator(
            task_id="endpoint_update",
            config={
                "Model": model(f"{run}-model-b"),
                "EndpointConfig": endpoint_config(f"{run}-config-b", f"{run}-model-b"),
                "Endpoint": {"EndpointName": endpoint, "EndpointConfigName": f"{run}-config-b"},
            },
            operation="update",
            check_interval=1,
            deferrable=True,
        )
        create_existing = SageMakerEndpointOperator(
            task_id="endpoint_create_existing",
            config={
                "EndpointConfig": endpoint_config(f"{run}-config-c", f"{run}-model-b"),
                "Endpoint": {"EndpointName": endpoint, "EndpointConfigName": f"{run}-config-c"},
            },
            operation="create",
            check_interval=1,
        )

        @task(task_id="invoke")
        def invoke() -> dict:
            runtime = AwsBaseHook(aws_conn_id="aws_default", client_type="sagemaker-runtime").get_conn()
            answers = {}
            for label, colour in COLOURS.items():
                response = runtime.invoke_endpoint(
                    EndpointName=endpoint, ContentType="application/x-image", Body=image_bytes(colour, "JPEG")
                )
                answers[label] = json.loads(response["Body"].read())
            return answers

        (
            train
            >> sense_training
            >> create_model
            >> create_config
            >> create_endpoint
            >> sense_endpoint
            >> update_endpoint
            >> create_existing
            >> invoke()
        )
    return dag, job, endpoint


def register(dag) -> None:
    """Serialize a DAG defined here into the metadata DB, as the DAG processor does for a DAG file."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.session import create_session

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    bundle = next(iter(manager.get_all_dag_bundles()))
    bag = DagBag(dag_folder=str(bundle.path), collect_dags=False, bundle_name=bundle.name)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, bundle.name, None)


def test_provider_operators_run_against_localcloud(localcloud, airflow_db, capfd):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    s3, sm, iam = localcloud.client("s3"), localcloud.client("sagemaker"), localcloud.client("iam")
    upload_dataset(s3, BUCKET, "images")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(
            RoleName=ROLE_NAME,
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "sagemaker.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )
    run = f"af-{uuid.uuid4().hex[:6]}"
    dag, job, endpoint = build_dag(run, "images")
    register(dag)

    dag_run = dag.test()

    with create_session() as session:
        dag_run = session.merge(dag_run)
        states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}

        def xcom(task_id: str):
            row = session.scalars(
                select(XComModel).where(
                    XComModel.dag_id == dag.dag_id,
                    XComModel.run_id == dag_run.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == "return_value",
                )
            ).first()
            return XComModel.deserialize_value(row)

        assert states == dict.fromkeys(
            [
                "train",
                "sense_training",
                "model",
                "endpoint_config",
                "endpoint_create",
                "sense_endpoint",
                "endpoint_update",
                "endpoint_create_existing",
                "invoke",
            ],
            "success",
        ), capfd.readouterr().out[-5000:]
        training = xcom("train")["Training"]
        invocations = xcom("invoke")

    assert training["TrainingJobStatus"] == "Completed"
    assert training["RoleArn"] == f"arn:aws:iam::123456789012:role/{ROLE_NAME}"
    assert {m["MetricName"] for m in training["FinalMetricDataList"]} == {"validation:accuracy", "train:loss"}
    # print_log=True: the operator read the job's log from CloudWatch Logs into the task log.
    assert "training complete" in capfd.readouterr().out

    assert invocations == {label: {"predictions": [{"label": label}], "model_version": "7"} for label in COLOURS}
    described = sm.describe_endpoint(EndpointName=endpoint)
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", f"{run}-config-c")
    assert sm.describe_training_job(TrainingJobName=job)["HyperParameters"]["version"] == "7"

    sm.delete_endpoint(EndpointName=endpoint)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
