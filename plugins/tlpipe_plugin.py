"""The ``tlpipe`` Airflow plugin: what the pipeline adds to Airflow itself.

Links from the fine-tune task to its SageMaker training job and from the deploy task to the endpoint, so that
the Airflow UI (and the REST API's ``/links``) leads from a run straight to what it made on SageMaker. The rest
of the project is the library ``plugins.tlpipe`` (see ``.airflowignore``), which the DAGs import.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.tlpipe.deploy.links import SageMakerEndpointLink, SageMakerTrainingJobLink


class TlpipePlugin(AirflowPlugin):
    name = "tlpipe"
    operator_extra_links = [SageMakerTrainingJobLink(), SageMakerEndpointLink()]
