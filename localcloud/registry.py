"""SageMaker Model Registry: model package groups and their versioned model packages, with approval status.

A versioned package (``CreateModelPackage`` with ``ModelPackageGroupName``) gets the group's next version number
and the ARN ``model-package/<group>/<version>``; it is ``Completed`` at once (localcloud validates nothing
asynchronously) and ``PendingManualApproval`` unless the request says otherwise. ``UpdateModelPackage``
changes its approval (with an ``ApprovalDescription``) and its customer metadata; ``CreateModel`` can name a
package version instead of an image (``PrimaryContainer.ModelPackageName``). Messages follow SageMaker's,
including the one the Amazon provider parses ("Model Package Group already exists: <arn>").
"""

from __future__ import annotations

import time

from .errors import arn, validation
from .responses import listing, page
from .state import MODEL_PACKAGE, MODEL_PACKAGE_GROUP

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
MAX_CUSTOMER_METADATA = 50


def package_arn(region: str, group: str, version: int) -> str:
    return f"{arn(region, 'model-package', group)}/{version}"


def _key(group: str, version: int) -> str:
    return f"{group.lower()}/{version}"


class ModelRegistry:
    def __init__(self, state):
        self.state = state

    # -- groups --------------------------------------------------------------------------------------------
    def create_group(self, body: dict, region: str) -> dict:
        name = body["ModelPackageGroupName"]
        group_arn = arn(region, "model-package-group", name)
        now = time.time()
        doc = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupArn": group_arn,
            "ModelPackageGroupDescription": body.get("ModelPackageGroupDescription", ""),
            "CreationTime": now,
            "CreatedBy": {},
            "ModelPackageGroupStatus": "Completed",
            "_next_version": 1,
        }
        if not self.state.insert(MODEL_PACKAGE_GROUP, name, group_arn, now, doc):
            raise validation(f"Model Package Group already exists: {group_arn}")
        if body.get("Tags"):
            self.state.add_tags(group_arn, body["Tags"])
        return {"ModelPackageGroupArn": group_arn}

    def _group(self, name: str, region: str) -> dict:
        name = name.rsplit("/", 1)[-1] if name.startswith("arn:") else name
        doc = self.state.get(MODEL_PACKAGE_GROUP, name)
        if doc is None:
            raise validation(f"ModelPackageGroup {arn(region, 'model-package-group', name)} does not exist.")
        return doc

    def describe_group(self, body: dict, region: str) -> dict:
        return self._group(body["ModelPackageGroupName"], region)

    def list_groups(self, body: dict, region: str) -> dict:
        groups = self.state.list(MODEL_PACKAGE_GROUP)
        if body.get("NameContains"):
            groups = [g for g in groups if body["NameContains"].lower() in g["ModelPackageGroupName"].lower()]
        items, token = page(groups, body, name_key="ModelPackageGroupName")
        keys = ("ModelPackageGroupName", "ModelPackageGroupArn", "ModelPackageGroupDescription", "CreationTime")
        summaries = [{**{k: g[k] for k in keys}, "ModelPackageGroupStatus": "Completed"} for g in items]
        return listing("ModelPackageGroupSummaryList", summaries, token)

    def delete_group(self, body: dict, region: str) -> dict:
        group = self._group(body["ModelPackageGroupName"], region)
        if self._versions(group["ModelPackageGroupName"]):
            raise validation(
                f"Model Package Group {group['ModelPackageGroupArn']} has model packages; delete them first."
            )
        self.state.delete(MODEL_PACKAGE_GROUP, group["ModelPackageGroupName"])
        return {}

    # -- versions ------------------------------------------------------------------------------------------
    def create_package(self, body: dict, region: str) -> dict:
        group_name = body.get("ModelPackageGroupName")
        if not group_name or body.get("ModelPackageName"):
            raise validation("localcloud keeps versioned model packages only: give ModelPackageGroupName alone.")
        spec = body.get("InferenceSpecification")
        if not spec or not spec.get("Containers"):
            raise validation("InferenceSpecification with at least one container is required.")
        for container in spec["Containers"]:
            url = container.get("ModelDataUrl")
            if url is not None and not url.startswith("s3://"):
                raise validation("ModelDataUrl must be an s3:// URL.")
        status = body.get("ModelApprovalStatus", "PendingManualApproval")
        _check_metadata(body.get("CustomerMetadataProperties") or {})
        holder = {}

        def next_version(group: dict) -> None:
            holder["version"] = group["_next_version"]
            group["_next_version"] += 1

        group = self._group(group_name, region)  # says so when the group does not exist
        group = self.state.update(MODEL_PACKAGE_GROUP, group["ModelPackageGroupName"], next_version)
        name, version = group["ModelPackageGroupName"], holder["version"]
        now = time.time()
        doc = {k: v for k, v in body.items() if k not in ("Tags", "ClientToken")}
        doc.update(
            {
                "ModelPackageName": name,
                "ModelPackageGroupName": name,
                "ModelPackageVersion": version,
                "ModelPackageArn": package_arn(region, name, version),
                "ModelPackageRegistrationType": body.get("ModelPackageRegistrationType", "Registered"),
                "CreationTime": now,
                "LastModifiedTime": now,
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
                "CertifyForMarketplace": bool(body.get("CertifyForMarketplace", False)),
                "ModelApprovalStatus": status,
                "CreatedBy": {},
            }
        )
        self.state.insert(MODEL_PACKAGE, _key(name, version), doc["ModelPackageArn"], now, doc)
        if body.get("Tags"):
            self.state.add_tags(doc["ModelPackageArn"], body["Tags"])
        return {"ModelPackageArn": doc["ModelPackageArn"]}

    def package(self, name_or_arn: str, region: str) -> dict:
        """A version by its ARN (``.../model-package/<group>/<version>``), as SageMaker names versions."""
        group, _, version = name_or_arn.rpartition("/")
        doc = None
        if name_or_arn.startswith("arn:") and version.isdigit():
            doc = self.state.get(MODEL_PACKAGE, _key(group.rsplit("/", 1)[-1], int(version)))
        if doc is None:
            raise validation(f"ModelPackage {name_or_arn} does not exist.")
        return doc

    def describe_package(self, body: dict, region: str) -> dict:
        return self.package(body["ModelPackageName"], region)

    def update_package(self, body: dict, region: str) -> dict:
        doc = self.package(body["ModelPackageArn"], region)
        metadata = dict(doc.get("CustomerMetadataProperties") or {})
        metadata.update(body.get("CustomerMetadataProperties") or {})
        for key in body.get("CustomerMetadataPropertiesToRemove") or []:
            metadata.pop(key, None)
        _check_metadata(metadata)

        def change(d: dict) -> None:
            for key in ("ModelApprovalStatus", "ApprovalDescription"):
                if key in body:
                    d[key] = body[key]
            d["CustomerMetadataProperties"] = metadata
            d["LastModifiedTime"] = time.time()

        key = _key(doc["ModelPackageGroupName"], doc["ModelPackageVersion"])
        return {"ModelPackageArn": self.state.update(MODEL_PACKAGE, key, change)["ModelPackageArn"]}

    def _versions(self, group: str) -> list[dict]:
        return [d for d in self.state.list(MODEL_PACKAGE) if d["ModelPackageGroupName"].lower() == group.lower()]

    def list_packages(self, body: dict, region: str) -> dict:
        if body.get("ModelPackageGroupName"):
            docs = self._versions(self._group(body["ModelPackageGroupName"], region)["ModelPackageGroupName"])
        else:
            docs = [] if body.get("ModelPackageType") == "Unversioned" else self.state.list(MODEL_PACKAGE)
        if body.get("ModelApprovalStatus"):
            docs = [d for d in docs if d["ModelApprovalStatus"] == body["ModelApprovalStatus"]]
        items, token = page(docs, body, name_key="ModelPackageGroupName", default_order="Ascending")
        keys = (
            "ModelPackageName",
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "ModelPackageDescription",
            "CreationTime",
            "ModelPackageStatus",
            "ModelApprovalStatus",
        )
        return listing("ModelPackageSummaryList", [{k: d.get(k) for k in keys if k in d} for d in items], token)


def _check_metadata(metadata: dict) -> None:
    if len(metadata) > MAX_CUSTOMER_METADATA:
        raise validation(f"CustomerMetadataProperties may hold at most {MAX_CUSTOMER_METADATA} entries.")
