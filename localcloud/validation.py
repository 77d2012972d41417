"""Request validation: botocore's SageMaker service model, then SageMaker's own rules.

The model check walks the operation's input shape and reports what the AWS front end reports: a wrong JSON
type is a ``SerializationException``; missing required members, lengths, ranges, enums and patterns are
collected into one ``ValidationException`` worded like AWS's ("1 validation error detected: Value 'a_b' at
'trainingJobName' failed to satisfy constraint: Member must satisfy regular expression pattern: ...").

botocore's client checks only required members and types before sending, so patterns, enums, maxima and
SageMaker's cross-field rules are caught here, as they are by the real service.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import botocore.session

from .errors import AwsError, validation

try:  # the service model uses Java classes such as \p{L}; the regex module understands them
    import regex as _re
except ImportError:  # pragma: no cover - regex ships with the environment
    import re as _re


@functools.lru_cache(maxsize=None)
def service_model(name: str):
    return botocore.session.get_session().get_service_model(name)


@functools.lru_cache(maxsize=None)
def _pattern(pattern: str):
    try:
        return _re.compile(pattern)
    except Exception:  # a Java-only construct: skip the check rather than reject valid input
        return None


def _camel(member: str) -> str:
    return member[:1].lower() + member[1:]


def _java_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, list):
        return "[" + ", ".join(_java_value(v).strip("'") for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_value(v).strip(chr(39))}" for k, v in value.items()) + "}"
    return str(value)


def _token(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE_VALUE" if value else "FALSE_VALUE"
    if isinstance(value, str):
        return "STRING_VALUE"
    if isinstance(value, (int, float)):
        return "NUMBER_VALUE"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, dict):
        return "START_OBJECT"
    return "VALUE_NULL"


_JAVA_TYPES = {
    "string": "String",
    "integer": "Integer",
    "long": "Long",
    "float": "Float",
    "double": "Double",
    "boolean": "Boolean",
    "timestamp": "Date",
    "blob": "ByteBuffer",
    "structure": "Structure",
    "list": "List",
    "map": "Map",
}


def _type_error(value: Any, type_name: str) -> AwsError:
    return AwsError(
        "SerializationException", f"{_token(value)} can not be converted to {_JAVA_TYPES.get(type_name, type_name)}"
    )


def _scalar_constraints(shape, value: Any) -> list[str]:
    """Constraint messages for one value of a scalar, list or map shape (type already checked)."""
    meta = shape.metadata
    problems: list[str] = []
    if shape.type_name in ("string", "blob", "list", "map"):
        size = len(value)
        if "max" in meta and size > meta["max"]:
            problems.append(f"Member must have length less than or equal to {meta['max']}")
        if "min" in meta and size < meta["min"]:
            problems.append(f"Member must have length greater than or equal to {meta['min']}")
    if shape.type_name in ("integer", "long", "float", "double"):
        if "max" in meta and value > meta["max"]:
            problems.append(f"Member must have value less than or equal to {meta['max']}")
        if "min" in meta and value < meta["min"]:
            problems.append(f"Member must have value greater than or equal to {meta['min']}")
    if shape.type_name == "string":
        enum = getattr(shape, "enum", None)
        if enum and value not in enum:
            problems.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        pattern = meta.get("pattern")
        compiled = _pattern(pattern) if pattern else None
        if compiled is not None and compiled.fullmatch(value) is None:
            problems.append(f"Member must satisfy regular expression pattern: {pattern}")
    return problems


def _check_type(shape, value: Any) -> None:
    t = shape.type_name
    ok = {
        "structure": isinstance(value, dict),
        "map": isinstance(value, dict),
        "list": isinstance(value, list),
        "string": isinstance(value, str),
        "blob": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "long": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "double": isinstance(value, (int, float)) and not isinstance(value, bool),
        "timestamp": isinstance(value, (int, float, str)) and not isinstance(value, bool),
    }.get(t, True)
    if not ok:
        raise _type_error(value, t)


def _walk(shape, value: Any, path: str, errors: list[str]) -> None:
    _check_type(shape, value)
    for problem in _scalar_constraints(shape, value):
        errors.append(f"Value {_java_value(value)} at '{path}' failed to satisfy constraint: {problem}")
    if shape.type_name == "structure":
        for member in shape.required_members:
            if value.get(member) is None:
                errors.append(
                    f"Value null at '{_join(path, _camel(member))}' failed to satisfy constraint: Member must not be null"
                )
        for member, member_shape in shape.members.items():
            if value.get(member) is not None:
                _walk(member_shape, value[member], _join(path, _camel(member)), errors)
    elif shape.type_name == "list":
        for index, item in enumerate(value, start=1):
            if item is not None:
                _walk(shape.member, item, f"{path}.{index}.member", errors)
    elif shape.type_name == "map":
        for key, item in value.items():
            key_problems = _scalar_constraints(shape.key, key)
            if key_problems:
                errors.append(
                    f"Value {_java_value(value)} at '{path}' failed to satisfy constraint: "
                    f"Map keys must satisfy constraint: [{', '.join(key_problems)}]"
                )
            if item is None:
                continue
            _check_type(shape.value, item)
            if shape.value.type_name in ("structure", "list", "map"):
                _walk(shape.value, item, f"{path}.{key}", errors)
                continue
            value_problems = _scalar_constraints(shape.value, item)
            if value_problems:
                errors.append(
                    f"Value {_java_value(value)} at '{path}' failed to satisfy constraint: "
                    f"Map value must satisfy constraint: [{', '.join(value_problems)}]"
                )


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


def collect(shape, value, path: str = "") -> list[str]:
    """Constraint violations of ``value`` against ``shape``; raises for JSON type mismatches."""
    errors: list[str] = []
    if shape is None:
        return errors
    _walk(shape, value, path, errors)
    return errors


def summary(errors: list[str]) -> str:
    count = len(errors)
    noun = "error" if count == 1 else "errors"
    return f"{count} validation {noun} detected: " + "; ".join(errors)


def raise_for(errors: list[str]) -> None:
    if errors:
        raise validation(summary(errors))


def parse_body(raw: bytes) -> dict:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AwsError("SerializationException", "Start of structure or map found where not expected.") from None
    if not isinstance(body, dict):
        raise _type_error(body, "structure")
    return body


def validate_request(service: str, operation: str, body: dict) -> None:
    """Check ``body`` against the input shape of ``operation`` and SageMaker's own rules."""
    op = service_model(service).operation_model(operation)
    errors = collect(op.input_shape, body)
    rule = _RULES.get(operation)
    if rule is not None:
        errors.extend(rule(body))
    raise_for(errors)


def _null(path: str) -> str:
    return f"Value null at '{path}' failed to satisfy constraint: Member must not be null"


# -- SageMaker's rules beyond the model ----------------------------------------------------------------------


def _training_job_rules(body: dict) -> list[str]:
    errors = []
    # Older models marked these required and SageMaker still needs them for a container training job.
    if body.get("AlgorithmSpecification") is None:
        errors.append(_null("algorithmSpecification"))
    if body.get("ResourceConfig") is None:
        errors.append(_null("resourceConfig"))
    return errors


_RULES = {"CreateTrainingJob": _training_job_rules}


def check_training_job(body: dict) -> None:
    """Cross-field rules SageMaker applies after the shape check, each answered as its own error."""
    spec = body["AlgorithmSpecification"]
    if bool(spec.get("TrainingImage")) == bool(spec.get("AlgorithmName")):
        raise validation("You must specify exactly one of AlgorithmName or TrainingImage in AlgorithmSpecification.")
    if spec.get("AlgorithmName"):
        raise validation(
            "localcloud runs container images only: AlgorithmSpecification.AlgorithmName is not supported."
        )
    for definition in spec.get("MetricDefinitions") or []:
        try:
            _re.compile(definition["Regex"])
        except Exception as err:
            raise validation(
                f"The regular expression '{definition['Regex']}' of metric '{definition['Name']}' is invalid: {err}"
            ) from None
    resources = body["ResourceConfig"]
    if resources.get("InstanceGroups"):
        raise validation(
            "localcloud runs training jobs on one instance: ResourceConfig.InstanceGroups is not supported."
        )
    if resources.get("InstanceCount") is None:
        raise_for([_null("resourceConfig.instanceCount")])
    if resources["InstanceCount"] != 1:
        raise validation(
            f"localcloud runs training jobs on one instance: ResourceConfig.InstanceCount must be 1, "
            f"not {resources['InstanceCount']}."
        )
    if spec.get("TrainingInputMode") == "Pipe":
        raise validation("localcloud supports the File and FastFile input modes, not Pipe.")
    names: set[str] = set()
    for channel in body.get("InputDataConfig") or []:
        name = channel["ChannelName"]
        if name in names:
            raise validation(f"Channel names must be unique within a training job: '{name}' is repeated.")
        names.add(name)
        if channel.get("InputMode") == "Pipe":
            raise validation("localcloud supports the File and FastFile input modes, not Pipe.")
        source = channel["DataSource"].get("S3DataSource")
        if source is None:
            raise validation(f"Channel '{name}': localcloud supports S3DataSource inputs only.")
        if source["S3DataType"] != "S3Prefix":
            raise validation(f"Channel '{name}': localcloud supports S3DataType S3Prefix only.")
        if not source["S3Uri"].startswith("s3://"):
            raise validation(f"Channel '{name}': S3Uri must be an s3:// URI.")
    if not body["OutputDataConfig"]["S3OutputPath"].startswith("s3://"):
        raise validation("OutputDataConfig.S3OutputPath must be an s3:// URI.")
    checkpoint = body.get("CheckpointConfig")
    if checkpoint and not checkpoint["S3Uri"].startswith("s3://"):
        raise validation("CheckpointConfig.S3Uri must be an s3:// URI.")
