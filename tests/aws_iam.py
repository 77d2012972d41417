"""Record the AWS calls code makes, turn them into IAM requests, and evaluate IAM policies against them.

    with AwsCallRecorder() as rec:              # every botocore session (boto3, provider hooks, aiobotocore)
        ... run code against an S3/SageMaker endpoint ...
    requests = [r for call in rec.calls for r in iam_requests(call, account="123456789012", region="us-east-1")]
    policy = Policy(json.loads(text))
    policy.allows(requests[0])                  # -> the matching statement's Sid, or None

The recorder registers a ``before-parameter-build`` handler on every botocore session created while it is active
(boto3, the Amazon provider's hooks, aiobotocore), so it sees each operation with the parameters it was called
with, once per call.
The mapping from operations to IAM actions and resource ARNs follows the Service Authorization Reference for
S3, SageMaker, CloudWatch alarms, Application Auto Scaling, CloudWatch Logs and IAM; an operation it does not know raises, so a new call cannot slip by
unchecked. The evaluator implements identity-policy evaluation for Allow/Deny statements with Action,
Resource and the condition operators the project's policies use; anything else raises.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import botocore.session


@dataclass(frozen=True)
class Call:
    service: str  # the IAM service prefix (signing name): s3, sagemaker, logs, iam, sts
    operation: str  # the API operation: HeadObject, CreateTrainingJob, ...
    params: dict = field(hash=False, compare=False)

    def __str__(self) -> str:
        return f"{self.service}:{self.operation}"


@dataclass(frozen=True)
class IamRequest:
    action: str
    resource: str
    context: tuple = ()  # ((key, value), ...) condition keys of the request
    origin: str = ""

    def ctx(self) -> dict[str, Any]:
        return dict(self.context)

    def __str__(self) -> str:
        extra = f" {dict(self.context)}" if self.context else ""
        return f"{self.action} on {self.resource}{extra} (from {self.origin})"


# Fired once per API call with the operation's own parameters (``before-call`` carries the serialized HTTP
# request instead), before botocore validates and sends them.
EVENT = "before-parameter-build"


class AwsCallRecorder:
    """Collects every botocore operation called while active (from any thread)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._original_init = None

    active = False

    def _record(self, model=None, params=None, **_):
        if not self.active:
            return
        service = model.service_model.signing_name or model.service_model.endpoint_prefix
        with self._lock:
            self.calls.append(Call(service, model.name, dict(params or {})))

    def __enter__(self) -> "AwsCallRecorder":
        import boto3

        recorder = self
        original = botocore.session.Session.__init__
        self._original_init = original

        def init(session, *args, **kwargs):
            original(session, *args, **kwargs)
            session.register(EVENT, recorder._record, unique_id=f"tlpipe-iam-recorder-{id(recorder)}")

        botocore.session.Session.__init__ = init
        # boto3.client() reuses one default session, possibly created before this recorder.
        if boto3.DEFAULT_SESSION is not None:
            boto3.DEFAULT_SESSION._session.register(EVENT, self._record, unique_id=f"tlpipe-iam-recorder-{id(self)}")
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False
        botocore.session.Session.__init__ = self._original_init

    def operations(self) -> set[str]:
        return {str(c) for c in self.calls}


# -- operations -> IAM requests -------------------------------------------------------------------------------
S3_ACTION = {
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "CreateBucket": "s3:CreateBucket",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "DeleteObjects": "s3:DeleteObject",
}
S3_BUCKET_LEVEL = {"HeadBucket", "ListObjects", "ListObjectsV2", "CreateBucket"}
# Operation parameter -> SageMaker resource type; the resource ARN lowercases the name as SageMaker does.
SAGEMAKER_RESOURCES = {
    "TrainingJobName": "training-job",
    "ModelName": "model",
    "EndpointConfigName": "endpoint-config",
    "EndpointName": "endpoint",
    "ModelPackageGroupName": "model-package-group",
}
SAGEMAKER_ARN_MEMBERS = ("ResourceArn", "ModelPackageName", "ModelPackageArn")  # members that hold an ARN
SAGEMAKER_NO_RESOURCE = re.compile(r"^(List|Search)")
SAGEMAKER_STAR_ONLY = {"ListModelPackages", "ListModelPackageGroups"}  # no resource-level permissions
LOG_GROUP_ACTIONS = {"DescribeLogStreams", "FilterLogEvents", "CreateLogGroup", "CreateLogStream", "DescribeLogGroups"}
LOG_STREAM_ACTIONS = {"GetLogEvents", "PutLogEvents"}
CLOUDWATCH_ALARM_ACTIONS = {"PutMetricAlarm", "DescribeAlarms", "DeleteAlarms"}
NO_PERMISSION = {("sts", "GetCallerIdentity")}  # answered for any valid credentials


def s3_arn(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key is not None else "")


def sagemaker_arn(region: str, account: str, kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"


def alarm_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:cloudwatch:{region}:{account}:alarm:{name}"


def log_group_arn(region: str, account: str, group: str) -> str:
    return f"arn:aws:logs:{region}:{account}:log-group:{group}"


def iam_requests(call: Call, *, account: str, region: str) -> list[IamRequest]:
    """The IAM requests AWS authorizes for one call, including the implied ones (PassRole, AddTags)."""
    p, op, origin = call.params, call.operation, str(call)
    out: list[IamRequest] = []
    if (call.service, op) in NO_PERMISSION:
        return out
    if call.service == "s3":
        if op not in S3_ACTION:
            raise KeyError(f"no IAM mapping for {origin}")
        if op in S3_BUCKET_LEVEL:
            ctx = (("s3:prefix", p["Prefix"]),) if "Prefix" in p else ()
            out.append(IamRequest(S3_ACTION[op], s3_arn(p["Bucket"]), ctx, origin))
        elif op == "DeleteObjects":
            out += [
                IamRequest("s3:DeleteObject", s3_arn(p["Bucket"], o["Key"]), (), origin) for o in p["Delete"]["Objects"]
            ]
        else:
            out.append(IamRequest(S3_ACTION[op], s3_arn(p["Bucket"], p["Key"]), (), origin))
    elif call.service == "sagemaker":
        action = f"sagemaker:{op}"
        arns = [
            sagemaker_arn(region, account, kind, p[key])
            for key, kind in SAGEMAKER_RESOURCES.items()
            if isinstance(p.get(key), str)
        ]
        for member in SAGEMAKER_ARN_MEMBERS:
            if isinstance(p.get(member), str) and p[member].startswith("arn:"):
                # An ARN a stand-in service returned carries its account: the request is made in ``account``.
                parts = p[member].split(":", 5)
                arns.append(":".join([*parts[:3], region, account, parts[5]]).lower())
        if op in SAGEMAKER_STAR_ONLY:
            arns = []
        if not arns:
            if not SAGEMAKER_NO_RESOURCE.match(op):
                raise KeyError(f"no resource for {origin}")
            arns = ["*"]
        out += [IamRequest(action, arn, (), origin) for arn in arns]
        # CreateTrainingJob/CreateModel hand SageMaker a role: iam:PassRole on it, for SageMaker only.
        for key in ("RoleArn", "ExecutionRoleArn"):
            if key in p and op.startswith("Create"):
                out.append(
                    IamRequest("iam:PassRole", p[key], (("iam:PassedToService", "sagemaker.amazonaws.com"),), origin)
                )
        if p.get("Tags") and op.startswith("Create"):
            created = arns[0]
            out.append(IamRequest("sagemaker:AddTags", created, (), origin))
    elif call.service == "logs":
        group = p.get("logGroupName")
        if op in LOG_GROUP_ACTIONS and group:
            out.append(IamRequest(f"logs:{op}", log_group_arn(region, account, group), (), origin))
        elif op in LOG_STREAM_ACTIONS and group:
            arn = f"{log_group_arn(region, account, group)}:log-stream:{p['logStreamName']}"
            out.append(IamRequest(f"logs:{op}", arn, (), origin))
        else:
            raise KeyError(f"no IAM mapping for {origin}")
    elif call.service == "monitoring":  # CloudWatch signs as "monitoring"; its IAM prefix is "cloudwatch"
        if op not in CLOUDWATCH_ALARM_ACTIONS:
            raise KeyError(f"no IAM mapping for {origin}")
        names = [p["AlarmName"]] if "AlarmName" in p else list(p.get("AlarmNames") or [])
        out += [IamRequest(f"cloudwatch:{op}", alarm_arn(region, account, n), (), origin) for n in names]
    elif call.service == "application-autoscaling":
        # Scalable targets and policies are authorized against "*": their ARNs carry a random id, not a name.
        out.append(IamRequest(f"application-autoscaling:{op}", "*", (), origin))
        if op == "RegisterScalableTarget":  # the first registration creates the service-linked role
            role = "aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
            out.append(
                IamRequest(
                    "iam:CreateServiceLinkedRole",
                    f"arn:aws:iam::{account}:role/{role}",
                    (("iam:AWSServiceName", "sagemaker.application-autoscaling.amazonaws.com"),),
                    origin,
                )
            )
    elif call.service == "iam":
        if op in ("GetRole", "PassRole"):
            name = p["RoleName"]
            arn = name if name.startswith("arn:") else f"arn:aws:iam::{account}:role/{name}"
            out.append(IamRequest(f"iam:{op}", arn, (), origin))
        else:
            raise KeyError(f"no IAM mapping for {origin}")
    else:
        raise KeyError(f"no IAM mapping for {origin}")
    return out


# -- policy evaluation ----------------------------------------------------------------------------------------
def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def action_matches(pattern: str, action: str) -> bool:
    """IAM action names match case-insensitively, with * and ? wildcards."""
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def resource_matches(pattern: str, arn: str) -> bool:
    return pattern == "*" or fnmatch.fnmatchcase(arn, pattern)


def _condition_holds(conditions: dict, ctx: dict[str, Any]) -> bool:
    for operator, tests in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator[: -len("IfExists")] if if_exists else operator
        for key, expected in tests.items():
            if key not in ctx:
                if if_exists:
                    continue
                return False
            value = str(ctx[key])
            wanted = [str(v) for v in _as_list(expected)]
            if base == "StringEquals":
                ok = value in wanted
            elif base in ("StringLike", "ArnLike"):
                ok = any(fnmatch.fnmatchcase(value, w) for w in wanted)
            else:
                raise ValueError(f"condition operator {operator} is not supported by this evaluator")
            if not ok:
                return False
    return True


class Policy:
    SUPPORTED = {"Sid", "Effect", "Action", "Resource", "Condition", "Principal"}

    def __init__(self, document: dict):
        if document.get("Version") != "2012-10-17":
            raise ValueError("policies must use Version 2012-10-17 (policy variables, current semantics)")
        self.statements = _as_list(document["Statement"])
        for st in self.statements:
            unknown = set(st) - self.SUPPORTED
            if unknown:
                raise ValueError(f"statement {st.get('Sid')}: {sorted(unknown)} not supported by this evaluator")

    def statement_for(self, request: IamRequest, effect: str) -> dict | None:
        ctx = request.ctx()
        for st in self.statements:
            if st["Effect"] != effect:
                continue
            if not any(action_matches(a, request.action) for a in _as_list(st["Action"])):
                continue
            if not any(resource_matches(r, request.resource) for r in _as_list(st.get("Resource", "*"))):
                continue
            if _condition_holds(st.get("Condition", {}), ctx):
                return st
        return None

    def allows(self, request: IamRequest) -> str | None:
        """The Sid of the statement that allows the request, or None (explicit Deny wins)."""
        if self.statement_for(request, "Deny"):
            return None
        st = self.statement_for(request, "Allow")
        return (st.get("Sid") or "(no Sid)") if st else None

    def allows_action(self, action: str) -> bool:
        """Whether some Allow statement names the action, whatever the resource (for calls on test names)."""
        return any(
            action_matches(a, action)
            for st in self.statements
            if st["Effect"] == "Allow"
            for a in _as_list(st["Action"])
        )
