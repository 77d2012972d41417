"""The ``tlpipe`` Airflow plugin: what the pipeline adds to Airflow itself.

Links from the fine-tune task to its SageMaker training job and from the deploy task to the endpoint, so that
the Airflow UI (and the REST API's ``/links``) leads from a run straight to what it made on SageMaker; and from
the fine-tune task to the run's artifacts beside its lineage record (TensorBoard logs, the report). The rest
of the project is the library ``plugins.tlpipe`` (see ``.airflowignore``), which the DAGs import.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.tlpipe.deploy.links import RunArtifactsLink, SageMakerEndpointLink, SageMakerTrainingJobLink


class TlpipePlugin(AirflowPlugin):
    name = "tlpipe"
    operator_extra_links = [SageMakerTrainingJobLink(), SageMakerEndpointLink(), RunArtifactsLink()]
