#!/usr/bin/env python3
"""Render the IAM policy templates in this folder with the names of config/pipeline.yaml.

    python deploy/aws/render.py                        # production profile -> build/iam/*.json
    python deploy/aws/render.py --profile local --out /tmp/iam
    TLPIPE__S3__BUCKET=other-bucket python deploy/aws/render.py   # overrides apply as everywhere

The templates name resources with ${Placeholders}; every value comes from the pipeline configuration, so the
policies can never drift from what the DAGs use:

    ${AccountId}, ${ExecutionRoleName}   sagemaker.role_arn
    ${Region}                             s3.region
    ${Bucket}, ${Prefix}                  s3.bucket, s3.prefix
    ${ResourcePrefix}                     sagemaker.resource_prefix (every SageMaker name starts with it)
    ${TrainingImageRepositoryArn}         the ECR repository of sagemaker.training_image_uri
    ${ServingImageRepositoryArn}          the ECR repository of sagemaker.serving_image_uri
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TEMPLATES = {
    "airflow-policy": HERE / "airflow-policy.json",
    "sagemaker-execution-trust-policy": HERE / "sagemaker-execution-trust-policy.json",
    "sagemaker-execution-policy": HERE / "sagemaker-execution-policy.json",
}
PLACEHOLDER = re.compile(r"\$\{([A-Za-z]+)\}")


def ecr_repository_arn(image_uri: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]`` -> the repository's ARN (in the
    registry's own account and region: an AWS-provided serving image lives in AWS's account)."""
    match = re.fullmatch(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)(?:[:@].+)?", image_uri)
    if not match:
        raise ValueError(f"not an ECR image URI: {image_uri!r}")
    account, region, repository = match.groups()
    return f"arn:aws:ecr:{region}:{account}:repository/{repository}"


def values_from_config(cfg) -> dict[str, str]:
    role = re.fullmatch(r"arn:aws[a-z-]*:iam::(\d{12}):role/(?:.*/)?([^/]+)", cfg.sagemaker.role_arn)
    if not role:
        raise ValueError(f"sagemaker.role_arn is not a role ARN: {cfg.sagemaker.role_arn!r}")
    if not cfg.s3.prefix:
        raise ValueError("s3.prefix is empty: the policies grant the pipeline's prefix, not the whole bucket")
    return {
        "AccountId": role.group(1),
        "ExecutionRoleName": role.group(2),
        "Region": cfg.s3.region,
        "Bucket": cfg.s3.bucket,
        "Prefix": cfg.s3.prefix,
        "ResourcePrefix": cfg.sagemaker.resource_prefix,
        "TrainingImageRepositoryArn": ecr_repository_arn(cfg.sagemaker.training_image_uri),
        "ServingImageRepositoryArn": ecr_repository_arn(cfg.sagemaker.serving_image_uri),
    }


def render(template, values: dict[str, str]):
    """Substitute every ${Name}; lists lose duplicates that two placeholders with one value create."""
    if isinstance(template, dict):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        out = []
        for item in (render(v, values) for v in template):
            if item not in out:
                out.append(item)
        return out
    if isinstance(template, str):

        def sub(match: re.Match) -> str:
            if match.group(1) not in values:
                raise KeyError(f"no value for ${{{match.group(1)}}}")
            return values[match.group(1)]

        return PLACEHOLDER.sub(sub, template)
    return template


def render_all(profile: str = "production") -> dict[str, dict]:
    sys.path.insert(0, str(ROOT))
    from plugins.tlpipe.config import load_config

    values = values_from_config(load_config(profile))
    return {name: render(json.loads(path.read_text()), values) for name, path in TEMPLATES.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="production", help="configuration profile (default: production)")
    parser.add_argument("--out", default=str(ROOT / "build" / "iam"), help="output folder (default: build/iam)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, policy in render_all(args.profile).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(policy, indent=2) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
