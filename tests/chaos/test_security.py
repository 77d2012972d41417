"""Security faults: crafted archives against every extraction (the fine-tune job's and serving's
``training.sagemaker.extract_tar``, localcloud's model-data unpacking), and the pods the DAGs render (a read-only
root filesystem, writable paths as emptyDirs, no secret in the spec)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from localcloud.model_servers import files_only
from plugins.tlpipe.config import load_config
from plugins.tlpipe.kube import pods
from training.sagemaker import ContractError, extract_tar

pytestmark = pytest.mark.chaos


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    data = b"owned" if kind == tarfile.REGTYPE else None
    if data is not None:
        info.size = len(data)
    return info, data


CRAFTED = {
    "parent traversal": [_member("../escape.txt")],
    "nested traversal": [_member("code/../../escape.txt")],
    "absolute path": [_member("/tmp/tlpipe-escape.txt")],
    "symlink out": [_member("model.keras", tarfile.SYMTYPE, "/etc/passwd")],
    "symlink then write through it": [_member("code", tarfile.SYMTYPE, "/tmp"), _member("code/escape.txt")],
    "symlink inside": [_member("a.txt"), _member("b.txt", tarfile.SYMTYPE, "a.txt")],
    "hard link out": [_member("passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "device file": [_member("null", tarfile.CHRTYPE)],
    "fifo": [_member("pipe", tarfile.FIFOTYPE)],
}


def _archive(path, members) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _outside(tmp_path) -> set[str]:
    return {p.name for p in tmp_path.iterdir()} | {p.name for p in (tmp_path.parent).iterdir() if "escape" in p.name}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_archives_are_refused_by_every_extraction(tmp_path, case, chaos):
    chaos.fault(
        "security",
        f"a crafted model archive: {case}",
        "refused by the job's, the server's and localcloud's extraction; nothing written outside",
    )
    archive = tmp_path / "evil.tar.gz"
    _archive(archive, CRAFTED[case])
    before = _outside(tmp_path)
    with pytest.raises(ContractError, match="refusing unsafe archive member"):
        extract_tar(archive, tmp_path / "job")
    with tarfile.open(archive) as tar, pytest.raises(tarfile.FilterError):
        tar.extractall(tmp_path / "localcloud", filter=files_only)
    assert _outside(tmp_path) - before <= {"job", "localcloud"}
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    chaos.figure("extractions that refused it", "2/2")


def test_rendered_pods_have_a_read_only_root_and_no_secret(chaos):
    chaos.fault(
        "security",
        "the pods the DAGs render (pretraining pod, MPIJob launcher and worker, curation)",
        "read-only root filesystem, writes to emptyDirs, non-root, no secret or key in the spec",
    )
    kube = load_config(profile="production", environ={}).kubernetes
    import kubernetes.client.models as k8s

    specs = {
        "pod": pods.pod_operator_kwargs(kube, "worker"),
        "curate": pods.pod_operator_kwargs(kube, "curate"),
        "mpijob launcher": pods.pod_template(kube, "launcher", k8s.V1Container(name="launcher"), {}),
        "mpijob worker": pods.pod_template(kube, "worker", k8s.V1Container(name="worker"), {}),
    }
    for name, spec in specs.items():
        if "container_security_context" in spec:
            csc, mounts = spec["container_security_context"], spec["volume_mounts"]
            volumes, env = spec["volumes"], spec["env_vars"]
            text = json.dumps(pods.to_dict(k8s.V1PodSpec(containers=[], volumes=volumes)))
            csc, mounts = pods.to_dict(csc), [pods.to_dict(m) for m in mounts]
            env = [pods.to_dict(e) for e in env]
        else:
            container = spec["spec"]["containers"][0]
            csc, mounts, env, text = container["securityContext"], container["volumeMounts"], container["env"], ""
        assert csc["readOnlyRootFilesystem"] is True and csc["runAsNonRoot"] is True, name
        assert "/tmp" in {m["mountPath"] for m in mounts}, name
        names = {e["name"] for e in env}
        assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}, name
        assert all("valueFrom" not in e for e in env), f"{name}: a secret through the environment"
        assert "secretKey" not in text and "password" not in text.lower(), name
    chaos.figure("pod kinds checked", len(specs))
