"""The SageMaker requests the deploy DAG sends, and the checks every one of them passes before it is sent.

    names = resource_names("tlpipe", run_id)        # job/model/config names: the same for every try of a run
    req = training_job_request(cfg.sagemaker, s3, names.job, inputs..., hyperparameters=...)
    validate("CreateTrainingJob", req)              # raises RequestError listing every problem

Names are ``<prefix>-ft-<12 hex of sha256(run_id)>`` (+ ``-rN`` for the Nth training attempt, ``-model``,
``-config``): deterministic, so a retry finds what an earlier try created, and at most 63 characters.

``validate`` checks a request against botocore's SageMaker service model (``ParamValidator``: required
members, types, minimum lengths) and then against what botocore does not enforce: the model's own maximum
lengths, patterns and enums (e.g. name patterns, the instance-type lists), plus the project's rules: an
``AlgorithmSpecification`` with the training image and the primary metric, the three fine-tune channels,
``s3://`` URIs with valid bucket names, an IAM role ARN, instance types of the form ``ml.<family>.<size>``
that SageMaker lists, tags outside the reserved ``aws:`` namespace.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from plugins.tlpipe.config import S3Config, SageMakerConfig
from training.contracts import CHANNELS, METRIC_DEFINITIONS, PRIMARY_METRIC

MAX_NAME = 63
MAX_TUNING_NAME = 32  # CreateHyperParameterTuningJob's limit
TUNING_PREFIX = MAX_TUNING_NAME - len("-hpo-") - 8 - len("-r20")
NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/[a-zA-Z_0-9+=,.@\-/]+$")
S3_URI_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>.*)$")
TAG_PREFIX = "tlpipe:"
VARIANT = "AllTraffic"
OPERATIONS = ("CreateTrainingJob", "CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint")
# Unicode classes the service model's patterns use, in Python's ``re`` terms (\w: letters, digits, "_";
# Z: the space separators, not line breaks).
_SPACES = "\u0020\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_UNICODE_CLASSES = {r"\p{L}": r"\w", r"\p{N}": r"\w", r"\p{Z}": _SPACES, r"\p{Alnum}": r"a-zA-Z0-9"}


class RequestError(ValueError):
    """A request that must not be sent; ``problems`` lists every reason."""

    def __init__(self, operation: str, problems: list[str]):
        self.operation = operation
        self.problems = problems
        super().__init__(f"{operation} request refused: " + "; ".join(problems))


# -- names ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResourceNames:
    job: str
    model: str
    endpoint_config: str
    tuning_job: str

    def job_attempt(self, attempt: int) -> str:
        """The training job of the ``attempt``-th try that had to start a new job (1 = ``job``)."""
        return job_attempt_name(self.job, attempt)


def run_hash(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:12]


def resource_names(prefix: str, run_id: str) -> ResourceNames:
    if not NAME_RE.match(prefix) or len(prefix) > 31:
        raise ValueError(f"resource prefix {prefix!r} must match {NAME_RE.pattern} and have at most 31 characters")
    base = f"{prefix}-ft-{run_hash(run_id)}"
    # Tuning job names have at most 32 characters: the prefix's first 15, -hpo-, 8 hex digits, and room for an
    # attempt suffix (-r2 ... -r20). The IAM policy's tuning-job resource matches prefixes of up to 15 characters.
    tuning = f"{prefix[:TUNING_PREFIX].rstrip('-')}-hpo-{run_hash(run_id)[:8]}"
    return ResourceNames(job=base, model=f"{base}-model", endpoint_config=f"{base}-config", tuning_job=tuning)


def job_attempt_name(base: str, attempt: int, limit: int = MAX_NAME) -> str:
    if attempt < 1:
        raise ValueError("attempts count from 1")
    name = base if attempt == 1 else f"{base}-r{attempt}"
    if len(name) > limit or not NAME_RE.match(name):
        raise ValueError(f"job name {name!r} breaks SageMaker's name rule")
    return name


# -- tags -----------------------------------------------------------------------------------------------------
_TAG_VALUE_BAD = re.compile(rf"[^\w{_SPACES}.:/=+\-@]")


def tag_value(value: Any) -> str:
    """A tag value SageMaker accepts: disallowed characters become ``-``, at most 256 characters."""
    return _TAG_VALUE_BAD.sub("-", str(value))[:256]


def tags(values: Mapping[str, Any]) -> list[dict[str, str]]:
    """``{"accuracy": 0.9}`` -> ``[{"Key": "tlpipe:accuracy", "Value": "0.9"}]`` (None values left out)."""
    return [{"Key": f"{TAG_PREFIX}{k}", "Value": tag_value(v)} for k, v in values.items() if v is not None]


def tag_dict(tag_list: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """ListTags' ``Tags`` -> ``{"accuracy": "0.9", ...}`` for the project's tags."""
    return {t["Key"][len(TAG_PREFIX) :]: t["Value"] for t in tag_list if t.get("Key", "").startswith(TAG_PREFIX)}


# -- builders -------------------------------------------------------------------------------------------------
def hyperparameter_strings(values: Mapping[str, Any]) -> dict[str, str]:
    """SageMaker passes hyperparameters as strings; booleans as ``true``/``false`` (what finetune parses)."""
    out = {}
    for key, value in values.items():
        out[str(key)] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def training_job_request(
    sm: SageMakerConfig,
    s3: S3Config,
    *,
    job_name: str,
    model_uri: str,
    train_uri: str,
    validation_uri: str,
    instance_type: str,
    instance_count: int,
    hyperparameters: Mapping[str, Any],
    lineage: Mapping[str, Any],
) -> dict:
    """CreateTrainingJob for ``python -m training.finetune`` with the pretrained/train/validation channels."""

    def channel(name: str, uri: str, content_type: str) -> dict:
        return {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
            },
            "ContentType": content_type,
            "CompressionType": "None",
            "InputMode": "File",
        }

    return {
        "TrainingJobName": job_name,
        "RoleArn": sm.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": sm.training_image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
        },
        "HyperParameters": hyperparameter_strings(hyperparameters),
        "InputDataConfig": [
            channel("pretrained", model_uri, "application/x-tar"),
            channel("train", train_uri, "application/x-image"),
            channel("validation", validation_uri, "application/x-image"),
        ],
        "OutputDataConfig": {"S3OutputPath": s3.uri("finetune")},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": int(instance_count),
            "VolumeSizeInGB": sm.training_volume_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": sm.training_max_runtime_seconds},
        "Tags": tags(lineage),
    }


def model_request(
    sm: SageMakerConfig, *, model_name: str, container: Mapping[str, Any], tag_values: Mapping[str, Any]
) -> dict:
    """CreateModel: the inference container of an approved Model Registry version (``serving_container`` when
    it was registered), tagged with its accuracy, its version and its lineage."""
    return {
        "ModelName": model_name,
        "ExecutionRoleArn": sm.role_arn,
        "PrimaryContainer": {**container, "Mode": "SingleModel"},
        "Tags": tags(tag_values),
    }


def endpoint_config_request(
    *,
    config_name: str,
    model_name: str,
    instance_type: str,
    instance_count: int,
    tag_values: Mapping[str, Any],
    data_capture: Mapping[str, Any] | None = None,
) -> dict:
    """CreateEndpointConfig: one variant taking all traffic (a new config per run, so rollback has the old one)."""
    capture = {"DataCaptureConfig": dict(data_capture)} if data_capture else {}
    return {
        **capture,
        "EndpointConfigName": config_name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": int(instance_count),
                "InitialVariantWeight": 1.0,
            }
        ],
        "Tags": tags(tag_values),
    }


def endpoint_request(*, endpoint_name: str, config_name: str) -> dict:
    """CreateEndpoint, or UpdateEndpoint with the same members (the provider's operator falls back to it)."""
    return {"EndpointName": endpoint_name, "EndpointConfigName": config_name}


# -- checks ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def service_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


@functools.lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern | None:
    for p_class, py_class in _UNICODE_CLASSES.items():
        pattern = pattern.replace(p_class, py_class)
    try:
        return re.compile(pattern)
    except re.error:
        return None


def botocore_problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    """What botocore's own validator says (the checks boto3 runs before sending)."""
    from botocore.validate import ParamValidator

    shape = service_model().operation_model(operation).input_shape
    report = ParamValidator().validate(params, shape)
    if not report.has_errors():
        return []
    return [line.strip() for line in report.generate_report().splitlines() if line.strip()]


def model_constraint_problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    """Maximum lengths, patterns and enums of the service model, which botocore does not enforce."""
    problems: list[str] = []

    def walk(value: Any, shape, path: str) -> None:
        kind = shape.type_name
        if kind == "structure" and isinstance(value, Mapping):
            for key, member in shape.members.items():
                if key in value:
                    walk(value[key], member, f"{path}.{key}" if path else key)
        elif kind == "list" and isinstance(value, list):
            if "max" in shape.metadata and len(value) > shape.metadata["max"]:
                problems.append(f"{path}: at most {shape.metadata['max']} items, got {len(value)}")
            for i, item in enumerate(value):
                walk(item, shape.member, f"{path}[{i}]")
        elif kind == "map" and isinstance(value, Mapping):
            if "max" in shape.metadata and len(value) > shape.metadata["max"]:
                problems.append(f"{path}: at most {shape.metadata['max']} entries, got {len(value)}")
            for key, item in value.items():
                walk(key, shape.key, f"{path} key {key!r}")
                walk(item, shape.value, f"{path}[{key!r}]")
        elif kind == "string" and isinstance(value, str):
            meta = shape.metadata
            if "max" in meta and len(value) > meta["max"]:
                problems.append(f"{path}: at most {meta['max']} characters, got {len(value)}")
            if "pattern" in meta:
                rx = _pattern(meta["pattern"])
                if rx is not None and not rx.fullmatch(value):
                    problems.append(f"{path}: {value!r} does not match {meta['pattern']}")
            if shape.enum and value not in shape.enum:
                problems.append(f"{path}: {value!r} is not one of SageMaker's {shape.name} values")
        elif kind in ("integer", "long") and isinstance(value, int) and "max" in shape.metadata:
            if value > shape.metadata["max"]:
                problems.append(f"{path}: at most {shape.metadata['max']}, got {value}")

    walk(params, service_model().operation_model(operation).input_shape, "")
    return problems


def _s3_problem(path: str, uri: Any) -> str | None:
    if not isinstance(uri, str) or not S3_URI_RE.match(uri) or ".." in uri.split("/", 3)[2]:
        return f"{path}: {uri!r} is not an s3://<bucket>/<key> URI"
    return None


def _instance_problem(path: str, value: Any, shape_name: str) -> str | None:
    if not isinstance(value, str) or not INSTANCE_TYPE_RE.match(value):
        return f"{path}: {value!r} is not an instance type of the form ml.<family>.<size>"
    if value not in service_model().shape_for(shape_name).enum:
        return f"{path}: {value!r} is not a SageMaker {shape_name}"
    return None


def _tag_problems(tag_list: Any) -> list[str]:
    out = []
    for i, tag in enumerate(tag_list or []):
        if isinstance(tag, Mapping) and str(tag.get("Key", "")).lower().startswith("aws:"):
            out.append(f"Tags[{i}]: the aws: prefix is reserved")
    return out


def _name_problem(field: str, value: Any) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_NAME or not NAME_RE.match(value):
        return f"{field}: {value!r} must match {NAME_RE.pattern} (1-63 letters, digits, hyphens)"
    return None


def project_problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    """The project's own rules, stricter than SageMaker's where it matters to the pipeline."""
    p: list[str | None] = []
    if operation == "CreateTrainingJob":
        p.append(_name_problem("TrainingJobName", params.get("TrainingJobName")))
        role = params.get("RoleArn")
        if not isinstance(role, str) or not ROLE_ARN_RE.match(role):
            p.append(f"RoleArn: {role!r} is not an IAM role ARN")
        algo = params.get("AlgorithmSpecification")
        if not isinstance(algo, Mapping):
            p.append("AlgorithmSpecification is required (the training image and its metric definitions)")
        else:
            if not algo.get("TrainingImage"):
                p.append("AlgorithmSpecification.TrainingImage is required")
            names = [m.get("Name") for m in algo.get("MetricDefinitions") or [] if isinstance(m, Mapping)]
            if PRIMARY_METRIC not in names:
                p.append(f"AlgorithmSpecification.MetricDefinitions must define {PRIMARY_METRIC}")
            for m in algo.get("MetricDefinitions") or []:
                try:
                    if re.compile(m.get("Regex", "")).groups != 1:
                        p.append(f"MetricDefinitions {m.get('Name')}: the regex needs exactly one group")
                except re.error as err:
                    p.append(f"MetricDefinitions {m.get('Name')}: bad regex ({err})")
        channels = params.get("InputDataConfig") or []
        got = sorted(c.get("ChannelName") for c in channels if isinstance(c, Mapping))
        if got != sorted(CHANNELS):
            p.append(
                f"InputDataConfig: channels must be {', '.join(CHANNELS)}; got {', '.join(map(str, got)) or 'none'}"
            )
        for i, c in enumerate(channels):
            uri = (((c or {}).get("DataSource") or {}).get("S3DataSource") or {}).get("S3Uri")
            p.append(_s3_problem(f"InputDataConfig[{i}].S3Uri", uri))
        output = (params.get("OutputDataConfig") or {}).get("S3OutputPath")
        p.append(_s3_problem("OutputDataConfig.S3OutputPath", output))
        resources = params.get("ResourceConfig") or {}
        p.append(
            _instance_problem("ResourceConfig.InstanceType", resources.get("InstanceType"), "TrainingInstanceType")
        )
        if not isinstance(resources.get("InstanceCount"), int) or resources.get("InstanceCount") < 1:
            p.append("ResourceConfig.InstanceCount must be a positive integer")
        if not (params.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds"):
            p.append("StoppingCondition.MaxRuntimeInSeconds is required (a job must not run unbounded)")
    elif operation == "CreateModel":
        p.append(_name_problem("ModelName", params.get("ModelName")))
        role = params.get("ExecutionRoleArn")
        if not isinstance(role, str) or not ROLE_ARN_RE.match(role):
            p.append(f"ExecutionRoleArn: {role!r} is not an IAM role ARN")
        container = params.get("PrimaryContainer")
        if not isinstance(container, Mapping) or not container.get("Image"):
            p.append("PrimaryContainer with an Image is required")
        else:
            p.append(_s3_problem("PrimaryContainer.ModelDataUrl", container.get("ModelDataUrl")))
    elif operation == "CreateEndpointConfig":
        p.append(_name_problem("EndpointConfigName", params.get("EndpointConfigName")))
        variants = params.get("ProductionVariants") or []
        if len(variants) != 1:
            p.append(f"ProductionVariants: exactly one variant expected, got {len(variants)}")
        for i, v in enumerate(variants):
            p.append(_name_problem(f"ProductionVariants[{i}].ModelName", v.get("ModelName")))
            p.append(
                _instance_problem(
                    f"ProductionVariants[{i}].InstanceType", v.get("InstanceType"), "ProductionVariantInstanceType"
                )
            )
            count = v.get("InitialInstanceCount")
            if not isinstance(count, int) or count < 1:
                p.append(f"ProductionVariants[{i}].InitialInstanceCount must be a positive integer")
    elif operation in ("CreateEndpoint", "UpdateEndpoint"):
        p.append(_name_problem("EndpointName", params.get("EndpointName")))
        p.append(_name_problem("EndpointConfigName", params.get("EndpointConfigName")))
    else:
        raise ValueError(f"no project rules for {operation}; known: {', '.join(OPERATIONS)}")
    out = [x for x in p if x]
    out.extend(_tag_problems(params.get("Tags")))
    return out


def problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    found = botocore_problems(operation, params)
    found += [x for x in model_constraint_problems(operation, params) if x not in found]
    found += [x for x in project_problems(operation, params) if x not in found]
    return found


def validate(operation: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``params`` unchanged when they pass every check, else raise ``RequestError``."""
    found = problems(operation, params)
    if found:
        raise RequestError(operation, found)
    return params
