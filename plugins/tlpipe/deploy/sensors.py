"""Sensors of the deploy DAG: the wait for a Model Registry version's approval."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.sensors.base_aws import AwsBaseSensor
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.sdk.exceptions import AirflowFailException

from plugins.tlpipe.deploy.registry import APPROVED, PENDING
from plugins.tlpipe.deploy.triggers import ModelApprovalTrigger


class ModelApprovalSensor(AwsBaseSensor[SageMakerHook]):
    """Waits until a model package version is ``Approved`` (returns its ARN); fails when it is ``Rejected``,
    with the approver's description, or when nobody decides within ``timeout`` seconds.

    :param model_package_arn: the version (templated)
    :param deferrable: wait in the triggerer (``ModelApprovalTrigger``) instead of a worker
    """

    aws_hook_class = SageMakerHook
    template_fields: Sequence[str] = aws_template_fields("model_package_arn")

    def __init__(self, *, model_package_arn: str, deferrable: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.model_package_arn = model_package_arn
        self.deferrable = deferrable

    def _decided(self, status: str, description: str | None) -> bool:
        if status == APPROVED:
            self.log.info("%s is approved%s", self.model_package_arn, f": {description}" if description else "")
            return True
        if status != PENDING:
            raise AirflowFailException(f"{self.model_package_arn} is {status}: {description or 'no reason given'}")
        return False

    def poke(self, context) -> bool:
        package = self.hook.conn.describe_model_package(ModelPackageName=self.model_package_arn)
        decided = self._decided(package["ModelApprovalStatus"], package.get("ApprovalDescription"))
        if not decided:
            self.log.info(
                "waiting for a person to approve %s (aws sagemaker update-model-package --model-package-arn %s "
                "--model-approval-status Approved)",
                self.model_package_arn,
                self.model_package_arn,
            )
        return decided

    def execute(self, context) -> str:
        if not self.deferrable or self.poke(context):
            if self.deferrable:
                return self.model_package_arn
            super().execute(context)
            return self.model_package_arn
        self.defer(
            trigger=ModelApprovalTrigger(
                self.model_package_arn, self.aws_conn_id, self.poke_interval, self.region_name
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context, event: dict[str, Any]) -> str:
        self._decided(event["status"], event.get("description"))
        return self.model_package_arn
