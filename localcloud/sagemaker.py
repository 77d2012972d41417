"""The SageMaker control plane (JSON protocol, ``X-Amz-Target: SageMaker.<Action>``) and runtime (rest-json,
``POST /endpoints/<name>/invocations``).

Requests are checked against botocore's service model and SageMaker's rules (:mod:`localcloud.validation`);
answers are filtered through the operation's output shape, so clients only ever see members the real API
has. Errors carry AWS's codes and messages, including the ones the Amazon provider for Airflow parses:
``ValidationException`` "Requested resource not found." for an unknown training job, "Could not find model /
endpoint configuration / endpoint ...", "Cannot create already existing endpoint ...", and the runtime's
``ValidationError`` "Endpoint <name> of account <id> not found.".
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import unquote

from werkzeug.wrappers import Request, Response

from . import validation as checks
from .endpoints import Endpoints, not_found_message
from .errors import AwsError, arn, not_found, validation
from .jobs import TrainingJobs
from .registry import ModelRegistry
from .responses import decode_token, encode_token, error_response, json_response, listing, page, render, request_region
from .runtime import Runtime
from .state import ENDPOINT, ENDPOINT_CONFIG, MODEL, TRAINING_JOB
from .tuning import TuningJobs

log = logging.getLogger("localcloud.sagemaker")

RUNTIME_PATH = re.compile(r"^/endpoints/([^/]+)/invocations/?$")
DEFAULT_REGION = "us-east-1"
MAX_TAGS = 50


class SageMaker:
    def __init__(self, local: Runtime, jobs: TrainingJobs, endpoints: Endpoints, tuning: TuningJobs):
        self.local = local
        self.state = local.state
        self.jobs = jobs
        self.tuning = tuning
        self.endpoints = endpoints
        self.registry = ModelRegistry(self.state)
        self.model = checks.service_model("sagemaker")
        self.runtime_model = checks.service_model("sagemaker-runtime")
        self.actions = {
            "CreateTrainingJob": self.create_training_job,
            "DescribeTrainingJob": self.describe_training_job,
            "StopTrainingJob": self.stop_training_job,
            "ListTrainingJobs": self.list_training_jobs,
            "CreateHyperParameterTuningJob": self.create_tuning_job,
            "DescribeHyperParameterTuningJob": self.describe_tuning_job,
            "StopHyperParameterTuningJob": self.stop_tuning_job,
            "ListTrainingJobsForHyperParameterTuningJob": self.list_training_jobs_for_tuning_job,
            "CreateModel": self.create_model,
            "DescribeModel": self.describe_model,
            "DeleteModel": self.delete_model,
            "ListModels": self.list_models,
            "CreateEndpointConfig": self.create_endpoint_config,
            "DescribeEndpointConfig": self.describe_endpoint_config,
            "DeleteEndpointConfig": self.delete_endpoint_config,
            "ListEndpointConfigs": self.list_endpoint_configs,
            "CreateEndpoint": self.create_endpoint,
            "UpdateEndpoint": self.update_endpoint,
            "UpdateEndpointWeightsAndCapacities": self.update_capacity,
            "DescribeEndpoint": self.describe_endpoint,
            "DeleteEndpoint": self.delete_endpoint,
            "ListEndpoints": self.list_endpoints,
            "CreateModelPackageGroup": self.registry.create_group,
            "DescribeModelPackageGroup": self.registry.describe_group,
            "ListModelPackageGroups": self.registry.list_groups,
            "DeleteModelPackageGroup": self.registry.delete_group,
            "CreateModelPackage": self.registry.create_package,
            "DescribeModelPackage": self.registry.describe_package,
            "UpdateModelPackage": self.registry.update_package,
            "ListModelPackages": self.registry.list_packages,
            "AddTags": self.add_tags,
            "ListTags": self.list_tags,
            "DeleteTags": self.delete_tags,
        }

    # -- WSGI entry points -------------------------------------------------------------------------------
    def control(self, environ, start_response):
        request = Request(environ)
        target = request.headers.get("X-Amz-Target", "")
        try:
            prefix, _, action = target.partition(".")
            if request.method != "POST" or prefix != "SageMaker":
                raise AwsError("UnknownOperationException", f"Unknown operation {target or request.path}")
            handler = self.actions.get(action)
            if handler is None:
                if action in self.model.operation_names:
                    raise AwsError(
                        "UnknownOperationException", f"localcloud does not implement the SageMaker action {action}."
                    )
                raise AwsError("UnknownOperationException", f"Unknown operation {target}")
            body = checks.parse_body(request.get_data())
            checks.validate_request("sagemaker", action, body)
            result = handler(body, request_region(environ)) or {}
            output_shape = self.model.operation_model(action).output_shape
            response = json_response(200, render(output_shape, result) or {})
        except AwsError as err:
            response = error_response(err)
        except Exception:
            log.exception("SageMaker %s failed", target)
            response = error_response(AwsError("InternalFailure", "An internal error occurred.", 500))
        return response(environ, start_response)

    def runtime(self, environ, start_response):
        request = Request(environ)
        try:
            match = RUNTIME_PATH.match(request.path)
            if request.method != "POST" or match is None:
                raise AwsError("UnknownOperationException", f"Unknown operation {request.method} {request.path}", 404)
            name = unquote(match.group(1))
            name_shape = self.runtime_model.operation_model("InvokeEndpoint").input_shape.members["EndpointName"]
            errors = checks.collect(name_shape, name, "endpointName")
            if errors:
                raise AwsError("ValidationError", checks.summary(errors))
            body, content_type, variant, custom = self.endpoints.invoke(
                name, request.get_data(), request.headers, request_region(environ)
            )
            headers = {"x-Amzn-Invoked-Production-Variant": variant, "x-amzn-RequestId": str(uuid.uuid4())}
            if custom:
                headers["X-Amzn-SageMaker-Custom-Attributes"] = custom
            response = Response(body, status=200, headers=headers, content_type=content_type)
        except AwsError as err:
            response = error_response(err, rest=True)
        except Exception:
            log.exception("InvokeEndpoint failed")
            response = error_response(AwsError("InternalFailure", "An internal error occurred.", 500), rest=True)
        return response(environ, start_response)

    # -- training jobs -----------------------------------------------------------------------------------
    def create_training_job(self, body: dict, region: str) -> dict:
        checks.check_training_job(body)
        return {"TrainingJobArn": self.jobs.create(body, region)}

    def describe_training_job(self, body: dict, region: str) -> dict:
        doc = self.state.get(TRAINING_JOB, body["TrainingJobName"])
        if doc is None:
            raise not_found()
        return doc

    def stop_training_job(self, body: dict, region: str) -> dict:
        self.jobs.stop(body["TrainingJobName"])
        return {}

    def list_training_jobs(self, body: dict, region: str) -> dict:
        items, token = page(
            self.state.list(TRAINING_JOB),
            body,
            name_key="TrainingJobName",
            status_key="TrainingJobStatus",
            default_order="Ascending",
        )
        fields = (
            "TrainingJobName",
            "TrainingJobArn",
            "CreationTime",
            "TrainingEndTime",
            "LastModifiedTime",
            "TrainingJobStatus",
            "SecondaryStatus",
        )
        return listing("TrainingJobSummaries", [{f: d[f] for f in fields if f in d} for d in items], token)

    # -- tuning jobs -------------------------------------------------------------------------------------
    def create_tuning_job(self, body: dict, region: str) -> dict:
        definition = body.get("TrainingJobDefinition") or {}
        if definition.get("AlgorithmSpecification") and definition.get("ResourceConfig"):
            # the training jobs it will start must pass CreateTrainingJob's own rules
            checks.check_training_job({**definition, "HyperParameters": definition.get("StaticHyperParameters") or {}})
        return {"HyperParameterTuningJobArn": self.tuning.create(body, region)}

    def describe_tuning_job(self, body: dict, region: str) -> dict:
        return self.tuning.describe(body["HyperParameterTuningJobName"])

    def stop_tuning_job(self, body: dict, region: str) -> dict:
        self.tuning.stop(body["HyperParameterTuningJobName"])
        return {}

    def list_training_jobs_for_tuning_job(self, body: dict, region: str) -> dict:
        return self.tuning.list_training_jobs(body)

    # -- models ------------------------------------------------------------------------------------------
    def create_model(self, body: dict, region: str) -> dict:
        name = body["ModelName"]
        containers = body.get("Containers") or []
        if body.get("PrimaryContainer") is None and not containers:
            raise validation("Either PrimaryContainer or Containers must be specified.")
        if body.get("PrimaryContainer") is not None and containers:
            raise validation("Specify either PrimaryContainer or Containers, not both.")
        if len(containers) > 1:
            raise validation("localcloud serves single-container models: Containers may hold one container.")
        container = body.get("PrimaryContainer") or containers[0]
        if container.get("ModelPackageName"):  # a registered version: its inference container
            package = self.registry.package(container["ModelPackageName"], region)
            container = {**package["InferenceSpecification"]["Containers"][0], **container}
        if container.get("Mode") == "MultiModel":
            raise validation("localcloud serves SingleModel containers only.")
        image = container.get("Image")
        if not image:
            raise validation("The container must specify an Image.")
        commands = self.local.images.resolve(image)
        if commands is None or not commands.serve:
            raise validation(
                f"localcloud has no serve command for image '{image}'. Map it with --images or LOCALCLOUD_IMAGES."
            )
        refusal = commands.refusal({}, container.get("Environment"))
        if refusal:
            raise validation(refusal)
        url = container.get("ModelDataUrl")
        if url is not None and not url.startswith("s3://"):
            raise validation("ModelDataUrl must be an s3:// URL.")
        model_arn = arn(region, "model", name)
        now = time.time()
        doc = {k: v for k, v in body.items() if k != "Tags"}
        doc.update({"ModelArn": model_arn, "CreationTime": now})
        doc.setdefault("EnableNetworkIsolation", False)
        if doc.get("PrimaryContainer") is not None:
            doc["PrimaryContainer"] = {"Mode": "SingleModel", **container}
        else:
            doc["Containers"] = [container]
        if not self.state.insert(MODEL, name, model_arn, now, doc):
            raise validation(f'Cannot create already existing model "{model_arn}".')
        if body.get("Tags"):
            self.state.add_tags(model_arn, body["Tags"])
        return {"ModelArn": model_arn}

    def describe_model(self, body: dict, region: str) -> dict:
        doc = self.state.get(MODEL, body["ModelName"])
        if doc is None:
            raise validation(f'Could not find model "{arn(region, "model", body["ModelName"])}".')
        return doc

    def delete_model(self, body: dict, region: str) -> dict:
        if self.state.delete(MODEL, body["ModelName"]) is None:
            raise validation(f'Could not find model "{arn(region, "model", body["ModelName"])}".')
        return {}

    def list_models(self, body: dict, region: str) -> dict:
        items, token = page(self.state.list(MODEL), body, name_key="ModelName")
        return listing(
            "Models",
            [
                {"ModelName": d["ModelName"], "ModelArn": d["ModelArn"], "CreationTime": d["CreationTime"]}
                for d in items
            ],
            token,
        )

    # -- endpoint configs --------------------------------------------------------------------------------
    def create_endpoint_config(self, body: dict, region: str) -> dict:
        name = body["EndpointConfigName"]
        if body.get("AsyncInferenceConfig"):
            raise validation("localcloud serves real-time endpoints: AsyncInferenceConfig is not supported.")
        seen: set[str] = set()
        variants, shadows = [], []
        for variant in body["ProductionVariants"] + (body.get("ShadowProductionVariants") or []):
            if variant["VariantName"] in seen:
                raise validation(f"The variant name(s) [{variant['VariantName']}] are not unique.")
            seen.add(variant["VariantName"])
            if not variant.get("ModelName"):
                raise validation(f"The production variant {variant['VariantName']} must specify a ModelName.")
            if variant.get("ServerlessConfig") is None and (
                variant.get("InstanceType") is None or variant.get("InitialInstanceCount") is None
            ):
                raise validation(
                    f"The production variant {variant['VariantName']} must specify InstanceType and "
                    "InitialInstanceCount, or ServerlessConfig."
                )
            if self.state.get(MODEL, variant["ModelName"]) is None:
                raise validation(f'Could not find model "{arn(region, "model", variant["ModelName"])}".')
            (variants if len(variants) < len(body["ProductionVariants"]) else shadows).append(
                {"InitialVariantWeight": 1.0, **variant}
            )
        config_arn = arn(region, "endpoint-config", name)
        now = time.time()
        doc = {k: v for k, v in body.items() if k != "Tags"}
        doc.update({"EndpointConfigArn": config_arn, "CreationTime": now, "ProductionVariants": variants})
        if shadows:
            doc["ShadowProductionVariants"] = shadows
        if not self.state.insert(ENDPOINT_CONFIG, name, config_arn, now, doc):
            raise validation(f'Cannot create already existing endpoint configuration "{config_arn}".')
        if body.get("Tags"):
            self.state.add_tags(config_arn, body["Tags"])
        return {"EndpointConfigArn": config_arn}

    def describe_endpoint_config(self, body: dict, region: str) -> dict:
        doc = self.state.get(ENDPOINT_CONFIG, body["EndpointConfigName"])
        if doc is None:
            raise validation(
                f'Could not find endpoint configuration "{arn(region, "endpoint-config", body["EndpointConfigName"])}".'
            )
        return doc

    def delete_endpoint_config(self, body: dict, region: str) -> dict:
        if self.state.delete(ENDPOINT_CONFIG, body["EndpointConfigName"]) is None:
            raise validation(
                f'Could not find endpoint configuration "{arn(region, "endpoint-config", body["EndpointConfigName"])}".'
            )
        return {}

    def list_endpoint_configs(self, body: dict, region: str) -> dict:
        items, token = page(self.state.list(ENDPOINT_CONFIG), body, name_key="EndpointConfigName")
        fields = ("EndpointConfigName", "EndpointConfigArn", "CreationTime")
        return listing("EndpointConfigs", [{f: d[f] for f in fields} for d in items], token)

    # -- endpoints ---------------------------------------------------------------------------------------
    def create_endpoint(self, body: dict, region: str) -> dict:
        return {"EndpointArn": self.endpoints.create(body, region)}

    def update_endpoint(self, body: dict, region: str) -> dict:
        return {"EndpointArn": self.endpoints.update(body, region)}

    def update_capacity(self, body: dict, region: str) -> dict:
        return {"EndpointArn": self.endpoints.update_capacity(body, region)}

    def describe_endpoint(self, body: dict, region: str) -> dict:
        doc = self.state.get(ENDPOINT, body["EndpointName"])
        if doc is None:
            raise validation(not_found_message(region, body["EndpointName"]))
        return doc

    def delete_endpoint(self, body: dict, region: str) -> dict:
        self.endpoints.delete(body["EndpointName"], region)
        return {}

    def list_endpoints(self, body: dict, region: str) -> dict:
        items, token = page(self.state.list(ENDPOINT), body, name_key="EndpointName", status_key="EndpointStatus")
        fields = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        return listing("Endpoints", [{f: d[f] for f in fields} for d in items], token)

    # -- tags --------------------------------------------------------------------------------------------
    def _tagged(self, resource_arn: str) -> None:
        if self.state.by_arn(resource_arn) is None:
            raise validation(f'Could not find resource "{resource_arn}".')

    def add_tags(self, body: dict, region: str) -> dict:
        self._tagged(body["ResourceArn"])
        keys = {t["Key"] for t in self.state.list_tags(body["ResourceArn"])} | {t["Key"] for t in body["Tags"]}
        if len(keys) > MAX_TAGS:
            raise validation(f"A resource can have at most {MAX_TAGS} tags.")
        self.state.add_tags(body["ResourceArn"], body["Tags"])
        return {"Tags": body["Tags"]}

    def list_tags(self, body: dict, region: str) -> dict:
        self._tagged(body["ResourceArn"])
        tags = self.state.list_tags(body["ResourceArn"])
        start = decode_token(body.get("NextToken"))
        size = body.get("MaxResults") or 50
        page = tags[start : start + size]
        return listing("Tags", page, encode_token(start + size) if start + size < len(tags) else None)

    def delete_tags(self, body: dict, region: str) -> dict:
        self._tagged(body["ResourceArn"])
        self.state.delete_tags(body["ResourceArn"], body["TagKeys"])
        return {}


# -- listing helpers ------------------------------------------------------------------------------------------
