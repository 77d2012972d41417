"""Links from a task to the SageMaker resource it made, in the task's "Links" in the Airflow UI.

The provider's ``BaseAwsLink`` builds the console URL from what ``persist`` stored in XCom when the task ran;
``tlpipe_plugin`` registers these classes, as Airflow needs for links of custom operators.
"""

from __future__ import annotations

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink


class SageMakerTrainingJobLink(BaseAwsLink):
    """The fine-tune task's SageMaker training job (metrics, logs, artifacts)."""

    name = "SageMaker Training Job"
    key = "tlpipe_sagemaker_training_job"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/jobs/{job_name}"


class SageMakerEndpointLink(BaseAwsLink):
    """The endpoint the deploy task created or updated (variants, metrics, events)."""

    name = "SageMaker Endpoint"
    key = "tlpipe_sagemaker_endpoint"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/endpoints/{endpoint_name}"


class RunArtifactsLink(BaseAwsLink):
    """The fine-tune's run artifacts beside its lineage record: the TensorBoard logs and the report."""

    name = "Run artifacts (TensorBoard, report)"
    key = "tlpipe_run_artifacts"
    format_str = BASE_AWS_CONSOLE_LINK + "/s3/buckets/{bucket}?region={region_name}&prefix={prefix}/"


def persist(link: type[BaseAwsLink], context, operator, **names: str) -> None:
    """Record what ``link`` points at for this task instance (a no-op when the task pushes no XCom). A link is
    a convenience: failing to record one never fails the task."""
    try:
        hook = operator.hook
        link.persist(
            context=context,
            operator=operator,
            region_name=hook.conn_region_name,
            aws_partition=hook.conn_partition,
            **names,
        )
    except Exception as err:  # noqa: BLE001
        operator.log.debug("no %s link: %s", link.name, err)
