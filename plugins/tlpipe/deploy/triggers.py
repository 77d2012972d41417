"""Triggers of the deploy DAG: waiting in the triggerer (no worker slot held) for a person to approve a Model
Registry version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

PENDING = "PendingManualApproval"


class ModelApprovalTrigger(BaseTrigger):
    """Polls ``DescribeModelPackage`` until the version's approval is no longer pending; the event carries the
    status and the approver's description."""

    def __init__(self, model_package_arn: str, aws_conn_id: str | None, poll_interval: float = 30.0, region_name=None):
        super().__init__()
        self.model_package_arn = model_package_arn
        self.aws_conn_id = aws_conn_id
        self.poll_interval = poll_interval
        self.region_name = region_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "model_package_arn": self.model_package_arn,
                "aws_conn_id": self.aws_conn_id,
                "poll_interval": self.poll_interval,
                "region_name": self.region_name,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        hook = SageMakerHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        async with await hook.get_async_conn() as client:
            while True:
                package = await client.describe_model_package(ModelPackageName=self.model_package_arn)
                status = package["ModelApprovalStatus"]
                if status != PENDING:
                    yield TriggerEvent(
                        {
                            "status": status,
                            "description": package.get("ApprovalDescription"),
                            "arn": self.model_package_arn,
                        }
                    )
                    return
                self.log.info("%s: still %s", self.model_package_arn, status)
                await asyncio.sleep(self.poll_interval)
