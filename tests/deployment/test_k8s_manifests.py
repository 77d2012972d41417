"""deploy/k8s: every object valid for the Kubernetes models and consistent with config/pipeline.yaml; the pods
the DAG creates admissible under the namespace's Pod Security level; and the Role equal to the requests the
DAG's Kubernetes operators make, recorded against an API server."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import types
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy_helpers import ROOT, kustomize

BASE, OVERLAY = "deploy/k8s/base", "deploy/k8s/overlays/tanzu"
MODELS = {
    "Namespace": "V1Namespace",
    "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role",
    "RoleBinding": "V1RoleBinding",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DAG_FILE = "general_pretraining.py"


def deserialize(obj: dict):
    """The object as the kubernetes client's model class (required fields are checked on construction)."""
    from kubernetes.client import ApiClient

    class _Response:
        data = json.dumps(obj)

    return ApiClient().deserialize(_Response(), MODELS[obj["kind"]])


def by_kind(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.fixture(scope="module")
def kube_cfg():
    from plugins.tlpipe.config import load_config

    return load_config("production", environ={}).kubernetes


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return kustomize(OVERLAY)


# -- manifests ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [BASE, OVERLAY])
def test_every_object_is_a_valid_kubernetes_model(path):
    from kubernetes.client import ApiClient

    objects = kustomize(path)
    assert {o["kind"] for o in objects} == set(MODELS)
    for obj in objects:
        model = deserialize(obj)
        # A round trip through the model loses nothing: no misspelt or unknown field is silently dropped.
        assert ApiClient().sanitize_for_serialization(model) == obj, obj["metadata"]["name"]
        assert model.api_version and model.kind == obj["kind"]
        assert DNS_SUBDOMAIN.match(model.metadata.name)


def test_the_model_check_catches_a_broken_object():
    # The validation is real: a RoleBinding without roleRef, or a rule without verbs, is refused.
    with pytest.raises(ValueError, match="role_ref"):
        deserialize({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "x"}})
    with pytest.raises(ValueError, match="verbs"):
        deserialize(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "x"},
                "rules": [{"apiGroups": [""], "resources": ["pods"]}],
            }
        )


def test_namespace_enforces_pod_security_restricted(rendered, kube_cfg):
    ns = deserialize(by_kind(rendered)[("Namespace", kube_cfg.namespace)])
    labels = ns.metadata.labels
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "latest"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kube_cfg.namespace


def test_identities_and_volume_match_the_pipeline_configuration(rendered, kube_cfg):
    objs = by_kind(rendered)
    training = deserialize(objs[("ServiceAccount", kube_cfg.service_account)])
    assert [s.name for s in training.image_pull_secrets] == list(kube_cfg.image_pull_secrets)
    assert training.automount_service_account_token is False
    role = deserialize(objs[("Role", "tlpipe-airflow")])
    binding = deserialize(objs[("RoleBinding", "tlpipe-airflow")])
    assert (binding.role_ref.kind, binding.role_ref.name, binding.role_ref.api_group) == (
        "Role",
        role.metadata.name,
        "rbac.authorization.k8s.io",
    )
    [subject] = binding.subjects
    assert (subject.kind, subject.namespace) == ("ServiceAccount", kube_cfg.namespace)
    assert ("ServiceAccount", subject.name) in objs and subject.name != kube_cfg.service_account
    pvc = deserialize(objs[("PersistentVolumeClaim", kube_cfg.data_volume.claim_name)])
    assert pvc.spec.access_modes == ["ReadWriteMany"], "MPIJob workers on several nodes mount the data at once"
    assert re.fullmatch(r"\d+(Gi|Ti)", pvc.spec.resources.requests["storage"])
    for obj in rendered:
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == kube_cfg.labels["app.kubernetes.io/part-of"]


def test_storage_class_is_a_parameter_of_the_overlay():
    base_pvc = next(o for o in kustomize(BASE) if o["kind"] == "PersistentVolumeClaim")
    tanzu_pvc = next(o for o in kustomize(OVERLAY) if o["kind"] == "PersistentVolumeClaim")
    # The base cannot be applied as is (the placeholder is not a valid name); the overlay sets a real class.
    assert not DNS_SUBDOMAIN.match(base_pvc["spec"]["storageClassName"])
    assert DNS_SUBDOMAIN.match(tanzu_pvc["spec"]["storageClassName"])
    assert {k: v for k, v in base_pvc["spec"].items() if k != "storageClassName"} == {
        k: v for k, v in tanzu_pvc["spec"].items() if k != "storageClassName"
    }


def test_tanzu_cluster_example_has_a_vgpu_node_pool():
    tkc = yaml.safe_load((ROOT / "deploy/k8s/tanzu/tkc-gpu.yaml").read_text())
    assert tkc["apiVersion"].startswith("run.tanzu.vmware.com/") and tkc["kind"] == "TanzuKubernetesCluster"
    pools = {p["name"]: p for p in tkc["spec"]["topology"]["nodePools"]}
    gpu = pools["gpu-workers"]
    assert "gpu" in gpu["vmClass"] and gpu["volumes"][0]["mountPath"] == "/var/lib/containerd"
    readme = (ROOT / "deploy/k8s/README.md").read_text()
    for topic in ("VM class", "vGPU", "GPU Operator", "mpi-operator", gpu["vmClass"]):
        assert topic in readme


# -- the DAG's Kubernetes tasks -------------------------------------------------------------------------------
class Recorder:
    """Every request the kubernetes client sends, except from helper threads (the fake kubelet)."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        self.helper_threads: set[int] = set()

    def __enter__(self):
        import kubernetes.client.rest as rest

        self._rest, self._original = rest, rest.RESTClientObject.request
        original, recorder = self._original, self

        def request(client, method, url, query_params=None, *args, **kwargs):
            if threading.get_ident() not in recorder.helper_threads:
                recorder.requests.append((method, url, dict(query_params or [])))
            return original(client, method, url, query_params, *args, **kwargs)

        rest.RESTClientObject.request = request
        return self

    def __exit__(self, *exc):
        self._rest.RESTClientObject.request = self._original

    def helper(self, target, *args) -> threading.Thread:
        def run():
            self.helper_threads.add(threading.get_ident())
            target(*args)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


def rbac_request(method: str, url: str, query: dict) -> tuple[str, str, str, str]:
    """(namespace, apiGroup, resource[/subresource], verb) the API server authorizes for a request."""
    match = PATH.match(urlparse(url).path)
    assert match, f"not a namespaced resource request: {method} {url}"
    group = "" if match["core"] else match["group"]
    resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
    watching = str(query.get("watch", "")).lower() in ("true", "1")
    verb = {
        "GET": "watch" if watching else ("get" if match["name"] else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if match["name"] else "deletecollection",
    }[method]
    return match["ns"], group, resource, verb


def test_rbac_request_mapping():
    assert rbac_request("GET", "http://h/api/v1/namespaces/x/pods", {"watch": "true"}) == ("x", "", "pods", "watch")
    assert rbac_request("GET", "http://h/api/v1/namespaces/x/pods", {"labelSelector": "a=b"})[3] == "list"
    assert rbac_request("GET", "http://h/api/v1/namespaces/x/pods/p/log", {"follow": True})[2:] == ("pods/log", "get")
    assert rbac_request("DELETE", "http://h/apis/kubeflow.org/v2beta1/namespaces/x/mpijobs/j", {}) == (
        "x",
        "kubeflow.org",
        "mpijobs",
        "delete",
    )


@pytest.fixture(scope="module")
def production_dag(tmp_path_factory):
    """The pretraining DAG as the production profile builds it (curation in a pod, pod and MPIJob launchers)."""
    from airflow_env import DAGS_FOLDER, load_dagbag, setup_airflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLPIPE_PROFILE", "production")
        setup_airflow()
        bag = load_dagbag(DAGS_FOLDER / DAG_FILE)
        assert bag.import_errors == {}
        dag = next(iter(bag.dags.values()))
        from plugins.tlpipe.config import get_config

        yield dag, get_config()


def kubernetes_tasks(dag) -> list:
    """The DAG's tasks that talk to the Kubernetes API (the provider's operators and those with a connection)."""
    out = []
    for task in dag.tasks:
        provider = any(c.__module__.startswith("airflow.providers.cncf.kubernetes") for c in type(task).__mro__)
        if provider or getattr(task, "kubernetes_conn_id", None):
            out.append(task)
    return out


def resolved(task, dag, cfg, launcher: str, workers: int):
    """The task with its XCom inputs replaced by what the DAG's ``prepare`` task returns for a run."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    from plugins.tlpipe.pretraining import steps

    params = {name: dag.params[name] for name in dag.params}
    prepared = steps.prepare_run(
        cfg,
        {**params, "launcher": launcher, "workers": workers, "gpus_per_worker": 1},
        dag.dag_id,
        f"manual__{launcher}",
    )  # one run per launcher: same MPIJob name
    for field in task.template_fields:
        value = getattr(task, field)
        if isinstance(value, XComArg):
            assert value.operator.task_id == "prepare", f"{task.task_id}.{field} comes from {value.operator.task_id}"
            setattr(task, field, prepared[value.key])
    return task, prepared


def context(dag, task, run_id: str) -> dict:
    ti = types.SimpleNamespace(
        dag_id=dag.dag_id,
        task_id=task.task_id,
        run_id=run_id,
        try_number=1,
        map_index=-1,
        start_date=None,
        xcom_push=lambda **_: None,
    )
    return {"ti": ti, "task_instance": ti, "run_id": run_id, "dag": dag, "task": task}


def run_pod(kube, namespace: str, phase: str, exit_code: int) -> None:
    """A kubelet: the operator's pod starts, runs a moment, then ends in ``phase`` with ``exit_code``."""
    pod = kube.wait_for("pods", namespace)
    name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]

    def status(state: dict, pod_phase: str) -> dict:
        return {
            "phase": pod_phase,
            "containerStatuses": [
                {
                    "name": container,
                    "ready": "running" in state,
                    "restartCount": 0,
                    "image": "x",
                    "imageID": "",
                    "state": state,
                }
            ],
        }

    kube.patch_status("pods", namespace, name, status({"running": {"startedAt": "2026-01-01T00:00:00Z"}}, "Running"))
    time.sleep(1.5)
    kube.patch_status(
        "pods",
        namespace,
        name,
        status(
            {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": "2026-01-01T00:00:00Z",
                    "finishedAt": "2026-01-01T00:01:00Z",
                }
            },
            phase,
        ),
    )


@pytest.fixture(scope="module")
def recorded(production_dag):
    """Run every Kubernetes task of the DAG through what a run does with it, recording the API requests."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.operators.resource import (
        KubernetesCreateResourceOperator,
        KubernetesDeleteResourceOperator,
    )
    from airflow.sdk import BaseSensorOperator
    from airflow.sdk.exceptions import AirflowException
    from airflow_env import kubernetes_connection
    from kube_mock import KubeServer

    from plugins.tlpipe.pretraining import mpijob

    dag, cfg = production_dag
    ns = cfg.kubernetes.namespace
    tasks = kubernetes_tasks(dag)
    driven: dict[str, str] = {}
    with KubeServer(pod_log=b"training output\n") as kube, Recorder() as rec, pytest.MonkeyPatch.context() as mp:
        for resource in ("v1/pods", "v1/events", f"{mpijob.GROUP}/{mpijob.VERSION}/{mpijob.PLURAL}"):
            kube.emulator.resources[resource] = {}
        mp.delenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", raising=False)  # restored when the context closes
        kubernetes_connection(kube.url, namespace=ns)
        mp.setenv("TLPIPE_PROFILE", "production")
        for task in tasks:
            launcher = "mpijob" if "mpijob" in task.task_id else "pod"
            task, prepared = resolved(task, dag, cfg, launcher, 2 if launcher == "mpijob" else 1)
            if isinstance(task, KubernetesPodOperator):
                # A pod that succeeds, a pod that fails (events logged, pod marked checked), then a kill.
                for phase, code in (("Succeeded", 0), ("Failed", 1)):
                    attempt = copy.deepcopy(task)  # a new try: the operator keeps its pod between calls
                    kubelet = rec.helper(run_pod, kube, ns, phase, code)
                    try:
                        attempt.execute(context(dag, attempt, f"manual__{task.task_id}_{phase}"))
                        assert phase == "Succeeded"
                    except AirflowException as err:
                        assert phase == "Failed" and "fail" in str(err), err
                    kubelet.join(30)
                    assert not kubelet.is_alive() and kube.objects("pods", ns) == []
                attempt.on_kill()
                driven[task.task_id] = "pod"
            elif isinstance(task, KubernetesCreateResourceOperator):
                task.execute({})
                task.execute({})  # a retry: the object exists already
                driven[task.task_id] = "create"
            elif isinstance(task, BaseSensorOperator):
                assert task.poke({}) is False
                name = task.name
                rec.helper(
                    kube.patch_status,
                    mpijob.PLURAL,
                    ns,
                    name,
                    {"conditions": [{"type": "Succeeded", "status": "True"}]},
                    mpijob.GROUP,
                    mpijob.VERSION,
                ).join(10)
                assert task.poke({}) is True
                task.on_kill()
                driven[task.task_id] = "sensor"
            elif isinstance(task, KubernetesDeleteResourceOperator):
                rec.helper(lambda: None).join()
                task.execute({})  # gone already (the sensor's kill deleted it): the teardown still succeeds
                driven[task.task_id] = "delete"
            else:
                raise AssertionError(f"no scenario for {task.task_id} ({type(task).__name__}); add one")
    return driven, [rbac_request(*r) for r in rec.requests]


def test_the_dags_kubernetes_tasks_were_all_driven(recorded, production_dag):
    driven, _ = recorded
    dag, _ = production_dag
    assert set(driven) == {t.task_id for t in kubernetes_tasks(dag)}
    # The production DAG creates pods (training and curation) and MPIJobs.
    assert {"pod", "create", "sensor", "delete"} <= set(driven.values())


def test_role_grants_exactly_what_the_operators_request(recorded, rendered, kube_cfg):
    _, requests = recorded
    assert {ns for ns, *_ in requests} == {kube_cfg.namespace}
    used = {(group, resource, verb) for _, group, resource, verb in requests}
    role = deserialize(by_kind(rendered)[("Role", "tlpipe-airflow")])
    granted = {
        (group, resource, verb)
        for rule in role.rules
        for group in rule.api_groups
        for resource in rule.resources
        for verb in rule.verbs
    }
    assert not [r for r in role.rules if r.resource_names or r.non_resource_urls]
    assert used - granted == set(), f"the operators need more than the Role grants: {sorted(used - granted)}"
    assert granted - used == set(), f"the Role grants what no operator uses: {sorted(granted - used)}"
    assert not any("*" in g for g in granted)


# -- Pod Security "restricted" for the pods the DAG creates ---------------------------------------------------
RESTRICTED_VOLUMES = {
    "config_map",
    "csi",
    "downward_api",
    "empty_dir",
    "ephemeral",
    "persistent_volume_claim",
    "projected",
    "secret",
}


def restricted_violations(spec) -> list[str]:
    """The Pod Security Standard "restricted" checks (which include "baseline") for a V1PodSpec."""
    out = []
    psc = spec.security_context
    if spec.host_network or spec.host_pid or spec.host_ipc:
        out.append("host namespaces")
    for vol in spec.volumes or []:
        kinds = [k for k, v in vol.to_dict().items() if k != "name" and v is not None]
        if not set(kinds) <= RESTRICTED_VOLUMES:
            out.append(f"volume {vol.name} of type {kinds}")
    pod_seccomp = psc.seccomp_profile.type if psc and psc.seccomp_profile else None
    for c in [*(spec.init_containers or []), *spec.containers]:
        sc = c.security_context
        if sc is None:
            out.append(f"{c.name}: no securityContext")
            continue
        if sc.privileged:
            out.append(f"{c.name}: privileged")
        if sc.allow_privilege_escalation is not False:
            out.append(f"{c.name}: allowPrivilegeEscalation must be false")
        if not (sc.run_as_non_root or (psc and psc.run_as_non_root)):
            out.append(f"{c.name}: runAsNonRoot")
        if sc.run_as_user == 0 or (psc and psc.run_as_user == 0):
            out.append(f"{c.name}: runs as uid 0")
        seccomp = sc.seccomp_profile.type if sc.seccomp_profile else pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c.name}: seccompProfile {seccomp}")
        caps = sc.capabilities
        if not caps or "ALL" not in (caps.drop or []) or set(caps.add or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{c.name}: capabilities must drop ALL")
        if any(p.host_port for p in c.ports or []):
            out.append(f"{c.name}: hostPort")
    return out


def test_the_dags_pods_pass_pod_security_restricted(production_dag, monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow_env import kubernetes_connection

    from plugins.tlpipe.pretraining import mpijob

    dag, cfg = production_dag
    # Building a pod reads the connection; nothing is sent (no server listens there).
    monkeypatch.delenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", raising=False)
    kubernetes_connection("http://127.0.0.1:9", namespace=cfg.kubernetes.namespace)
    specs = {}
    for task in kubernetes_tasks(dag):
        launcher = "mpijob" if "mpijob" in task.task_id else "pod"
        task, prepared = resolved(task, dag, cfg, launcher, 2 if launcher == "mpijob" else 1)
        if isinstance(task, KubernetesPodOperator):
            specs[task.task_id] = task.build_pod_request_obj(context(dag, task, "manual__psa")).spec
        elif launcher == "mpijob" and prepared["mpijob_yaml"]:
            job = mpijob.MPIJob.model_validate(yaml.safe_load(prepared["mpijob_yaml"]))
            for role, replica in job.spec.mpi_replica_specs.items():
                specs[f"mpijob {role}"] = mpijob.pod_template(replica.template).spec
    assert {"launch.pod", "curate", "mpijob Launcher", "mpijob Worker"} <= set(specs)
    for name, spec in specs.items():
        assert restricted_violations(spec) == [], name
        assert spec.security_context.run_as_user == cfg.kubernetes.run_as_user
        assert spec.service_account_name == cfg.kubernetes.service_account
        assert [s.name for s in spec.image_pull_secrets] == list(cfg.kubernetes.image_pull_secrets)


def test_the_restricted_check_catches_a_privileged_pod():
    from kubernetes.client import models as k8s

    spec = k8s.V1PodSpec(
        containers=[k8s.V1Container(name="c", security_context=k8s.V1SecurityContext(privileged=True, run_as_user=0))],
        volumes=[k8s.V1Volume(name="h", host_path=k8s.V1HostPathVolumeSource(path="/"))],
    )
    found = " ".join(restricted_violations(spec))
    for problem in ("privileged", "allowPrivilegeEscalation", "uid 0", "host_path", "seccompProfile", "ALL"):
        assert problem in found
