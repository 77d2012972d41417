"""A SageMaker user's session against localcloud, with the SageMaker Python SDK (run with the SDK's venv):
``Estimator(...).fit()`` with the job's logs streamed, ``deploy()``, then a ``Predictor`` and a
``TensorFlowPredictor`` invoke. Prints one JSON line (``RESULT {...}``) for the test to check.

    sdk_client.py ENDPOINT_URL BUCKET IMAGE_URI ROLE_ARN IMAGE_FILE
"""

import base64
import json
import sys

import boto3
import sagemaker
from sagemaker.deserializers import JSONDeserializer
from sagemaker.estimator import Estimator
from sagemaker.predictor import Predictor
from sagemaker.serializers import IdentitySerializer
from sagemaker.tensorflow import TensorFlowPredictor

url, bucket, image_uri, role, image_file = sys.argv[1:6]
boto = boto3.Session(region_name="us-east-1")  # key from the environment, as on a laptop
session = sagemaker.Session(
    boto_session=boto,
    sagemaker_client=boto.client("sagemaker", endpoint_url=url),
    sagemaker_runtime_client=boto.client("sagemaker-runtime", endpoint_url=url),
    default_bucket=bucket,
    # SageMaker's SDK defaults config, telemetry off: nothing leaves this machine.
    sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
)
estimator = Estimator(
    image_uri=image_uri,
    role=role,
    instance_count=1,
    instance_type="ml.m5.large",
    output_path=f"s3://{bucket}/sdk-output",
    hyperparameters={"epochs": 2, "version": "sdk"},
    metric_definitions=[{"Name": "train:accuracy", "Regex": "accuracy=([0-9.]+)"}],
    sagemaker_session=session,
    base_job_name="sdk-estimator",
)
estimator.fit({"train": f"s3://{bucket}/data/train", "validation": f"s3://{bucket}/data/validation"}, logs="All")
job = session.describe_training_job(estimator.latest_training_job.name)

predictor = estimator.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name="sdk-endpoint")
raw = open(image_file, "rb").read()
by_bytes = Predictor(
    predictor.endpoint_name,
    sagemaker_session=session,
    serializer=IdentitySerializer("application/x-image"),
    deserializer=JSONDeserializer(),
).predict(raw)
by_tfs = TensorFlowPredictor(predictor.endpoint_name, sagemaker_session=session).predict(
    {"instances": [{"b64": base64.b64encode(raw).decode()}]}
)
status = session.sagemaker_client.describe_endpoint(EndpointName=predictor.endpoint_name)["EndpointStatus"]
predictor.delete_endpoint()
result = {
    "job": job["TrainingJobName"],
    "job_status": job["TrainingJobStatus"],
    "model_data": estimator.model_data,
    "metrics": {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])},
    "endpoint_status": status,
    "predict_bytes": by_bytes,
    "predict_tfs": by_tfs,
}
print("\nRESULT " + json.dumps(result), flush=True)  # deploy() leaves its progress dots unterminated
