"""AWS-shaped errors.

Every failure a client can see is raised as :class:`AwsError` and rendered the way the real service renders it
(JSON protocol for the SageMaker control plane, rest-json for the runtime), so botocore raises the same
``ClientError`` code and message it would raise against AWS.
"""

from __future__ import annotations

ACCOUNT_ID = "123456789012"


class AwsError(Exception):
    """An error answered to the client: ``code`` becomes ``Error.Code``, ``message`` ``Error.Message``."""

    def __init__(self, code: str, message: str, status: int = 400, extra: dict | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra or {}


def validation(message: str) -> AwsError:
    return AwsError("ValidationException", message)


def not_found() -> AwsError:
    # What SageMaker answers for a training job it does not know (the provider relies on the code).
    return validation("Requested resource not found.")


def arn(region: str, kind: str, name: str) -> str:
    # SageMaker lower-cases resource names in ARNs: names are case-insensitive.
    return f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}:{kind}/{name.lower()}"
