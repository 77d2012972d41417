"""The container images, checked without Docker: hadolint, what each Dockerfile installs and how, the MPIJob
sshd settings against config/pipeline.yaml, and the SageMaker entrypoints run for real."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.deploy_helpers import ROOT, Dockerfile, dockerignore_excludes, read_ssh_config, venv_tool

DOCKERFILES = ["docker/training.Dockerfile", "docker/sagemaker.Dockerfile", "docker/airflow.Dockerfile"]
SOURCE_DIRS = ("training/", "plugins/", "dags/", "config/", "localcloud/")


@pytest.fixture(scope="module")
def pipeline() -> dict:
    """config/pipeline.yaml's production profile merged over its defaults (what the cluster runs)."""
    sys.path.insert(0, str(ROOT))
    from plugins.tlpipe.config import load_config

    return load_config("production", environ={}).model_dump(mode="json")


def setup_sh_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", (ROOT / "scripts/setup.sh").read_text(), re.M)
    assert match, f"scripts/setup.sh no longer sets {name}"
    return match.group(1)


def constraint_pin(name: str) -> str:
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        key, _, version = line.partition("==")
        if key.strip().lower().replace("_", "-") == name:
            return version.strip()
    raise AssertionError(f"{name} is not pinned in requirements/constraints.txt")


def grep_v(run: str, text: str) -> list[str]:
    """Apply the ``grep -v -E '<regex>' <file>`` filters of a RUN line to ``text``, as the build does."""
    lines = text.splitlines()
    for regex in re.findall(r"grep -v -E '([^']+)'", run):
        lines = [ln for ln in lines if not re.search(regex, ln)]
    return lines


# -- hadolint -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DOCKERFILES)
def test_hadolint_error_level(path):
    proc = subprocess.run(
        [str(venv_tool("hadolint")), "--failure-threshold", "error", "--no-color", path],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_on_an_error(tmp_path):
    # The lint gate is real: an error-level finding (relative WORKDIR) makes it fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:22.04\nWORKDIR app\n")
    proc = subprocess.run(
        [str(venv_tool("hadolint")), "--failure-threshold", "error", "--no-color", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "DL3000" in proc.stdout


# -- every image ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", DOCKERFILES)
def test_copied_sources_are_in_the_build_context(path):
    df = Dockerfile.load(path)
    for stage in df.order:
        for ins in stage.all("COPY"):
            if "from" in ins.flags():
                continue
            *sources, _dest = ins.args()
            for src in sources:
                assert (ROOT / src).exists(), f"{path}:{ins.line} copies {src}, which does not exist"
                assert not dockerignore_excludes(src), f"{path}:{ins.line}: .dockerignore leaves out {src}"


def test_dockerignore_keeps_local_state_out():
    for path in (
        ".git",
        ".venv",
        ".venv/bin/python",
        "var/data",
        "tests/deployment/test_docker.py",
        ".env",
        "training/__pycache__/store.cpython-311.pyc",
        "tlpipe.egg-info/PKG-INFO",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dependencies_are_pinned_and_installed_before_the_source(path):
    df = Dockerfile.load(path)
    for stage in df.order:
        source_copied_at = None
        for ins in stage.instructions:
            if ins.cmd == "COPY" and any(a.startswith(SOURCE_DIRS) for a in ins.args()[:-1]):
                source_copied_at = source_copied_at or ins.line
            if ins.cmd != "RUN" or "pip install" not in ins.value:
                continue
            for cmd in ins.value.split("&&"):
                if "pip install" not in cmd or "--no-deps" in cmd or "-U pip" in cmd:
                    continue
                if "-r " in cmd or "==" in cmd or "[" in cmd:
                    # Dependencies: always under the project's constraints, never after the source (cache).
                    assert "-c " in cmd, f"{path}:{ins.line}: unpinned install: {cmd.strip()}"
                    assert source_copied_at is None, (
                        f"{path}:{ins.line}: dependencies installed after the source was copied "
                        f"(line {source_copied_at}), so every code change would reinstall them"
                    )


@pytest.mark.parametrize("path", ["docker/training.Dockerfile", "docker/sagemaker.Dockerfile"])
def test_constraint_filters_drop_the_local_horovod_wheel(path):
    # constraints.txt pins Horovod to a wheel on the developer's disk; the images build their own.
    df = Dockerfile.load(path)
    run = next(r for s in df.order for r in s.runs() if "constraints.txt" in r and "grep" in r)
    kept = grep_v(run.split("&&")[0], (ROOT / "requirements/constraints.txt").read_text())
    assert not [ln for ln in kept if "file://" in ln or ln.lower().startswith("horovod")]
    assert any(ln.startswith("keras==") for ln in kept)
    training_in = grep_v(run.split("&&")[1], (ROOT / "requirements/training.in").read_text())
    assert not [ln for ln in training_in if ln.startswith("tensorflow-cpu")]
    assert any(ln.startswith("keras") for ln in training_in)


# -- training image -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training() -> Dockerfile:
    return Dockerfile.load("docker/training.Dockerfile")


def test_training_image_bases_are_cuda12_cudnn(training):
    build, runtime = training.stages["build"], training.final
    build_base, runtime_base = training.base_image(build), training.base_image(runtime)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-devel-ubuntu22\.04", build_base), build_base
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", runtime_base), runtime_base
    # The CUDA minor version of the base is the one the pinned CUDA wheels and Horovod's kernels use.
    cuda_minor = ".".join(build_base.split(":")[1].split(".")[:2])
    pins = dict(
        ln.split("==")
        for ln in (ROOT / "docker/cuda-constraints.txt").read_text().splitlines()
        if "==" in ln and not ln.startswith("#")
    )
    assert pins["nvidia-cuda-runtime-cu12"].startswith(cuda_minor + ".")
    # NCCL comes with the devel base (libnccl-dev) for the build, and the runtime base (libnccl2) at run time.
    assert any("python3.11 " in r for r in build.runs()) and any("python3.11 " in r for r in runtime.runs())


def test_training_image_tensorflow_is_the_pinned_gpu_build(training):
    build = training.stages["build"]
    tf_version = training.resolve("${TF_VERSION}", build)
    assert tf_version == setup_sh_value("TF_VERSION") == constraint_pin("tensorflow-cpu")
    install = next(r for r in build.runs() if "tensorflow[and-cuda]" in r)
    assert '"tensorflow[and-cuda]==${TF_VERSION}"' in install


def test_training_image_builds_horovod_like_setup_sh_with_nccl_mpi_gloo(training):
    build = training.stages["build"]
    assert training.resolve("${HOROVOD_VERSION}", build) == setup_sh_value("HOROVOD_VERSION")
    patch = setup_sh_value("PATCH").replace("$ROOT/", "")
    assert (ROOT / patch).is_file()
    copied = [i for i in build.all("COPY") if patch in i.args()]
    assert copied, f"the build stage does not copy {patch}"
    patch_in_image = copied[0].args()[-1]
    wheel = next(r for r in build.runs() if "pip wheel" in r)
    assert f"-p1 < {patch_in_image}" in wheel
    env = dict(re.findall(r"\b([A-Z_]+)=(\S+)", wheel))
    setup_env = dict(re.findall(r"\b(CMAKE_POLICY_VERSION_MINIMUM)=(\S+)", (ROOT / "scripts/setup.sh").read_text()))
    assert env["CMAKE_POLICY_VERSION_MINIMUM"] == setup_env["CMAKE_POLICY_VERSION_MINIMUM"] == "3.5"
    for key, value in {
        "HOROVOD_GPU_OPERATIONS": "NCCL",
        "HOROVOD_WITH_MPI": "1",
        "HOROVOD_WITH_GLOO": "1",
        "HOROVOD_WITH_TENSORFLOW": "1",
    }.items():
        assert env.get(key) == value, f"Horovod is built without {key}={value}"
    assert "HOROVOD_WITHOUT_MPI" not in wheel
    # OpenMPI: headers to build against, mpirun and the shared library to run with.
    assert any("libopenmpi-dev" in r for r in build.runs())
    assert any("openmpi-bin" in r and "libopenmpi3" in r for r in training.final.runs())
    # The runtime stage refuses a Horovod that lacks a controller or NCCL.
    assert any(
        "hvd.mpi_built()" in r and "hvd.gloo_built()" in r and "hvd.nccl_built()" in r for r in training.final.runs()
    )


def test_training_image_runs_as_the_pods_user(training, pipeline):
    runtime = training.final
    kube = pipeline["kubernetes"]
    assert runtime.user == f"{kube['run_as_user']}:{kube['run_as_group']}"
    args = training.stage_args(runtime)
    assert int(args["USER_UID"]) == kube["run_as_user"] and int(args["USER_GID"]) == kube["run_as_group"]
    useradd = next(r for r in runtime.runs() if "useradd" in r)
    assert '--uid "${USER_UID}"' in useradd and '--gid "${USER_GID}"' in useradd
    # The project is installed into the image's environment after the dependencies, without pulling any.
    install = next(r for r in runtime.runs() if "/opt/tlpipe" in r and "pip install" in r)
    assert "--no-deps" in install and "import training.pretrain" in install


def test_training_image_sshd_matches_the_mpijob_settings(training, pipeline):
    runtime, mpi, kube = training.final, pipeline["mpijob"], pipeline["kubernetes"]
    sshd_binary, _, _, config_path = mpi["sshd_command"]
    assert sshd_binary == "/usr/local/bin/start-sshd" and any("openssh-server" in r for r in runtime.runs())
    copy = next(i for i in runtime.all("COPY") if i.args()[-1] == config_path)
    assert copy.flags()["chown"] == f"{kube['run_as_user']}:{kube['run_as_group']}"
    sshd = read_ssh_config(ROOT / copy.args()[0])
    client = read_ssh_config(ROOT / "docker/mpi/ssh_config")
    port = mpi["ssh_port"]
    assert port >= 1024, "a non-root sshd cannot bind a privileged port"
    assert sshd["port"] == [str(port)] and client["port"] == [str(port)]
    assert str(port) in next(i for i in runtime.all("EXPOSE")).args()
    home = mpi["ssh_auth_mount_path"].rsplit("/", 1)[0]
    user = home.rsplit("/", 1)[1]
    assert sshd["allowusers"] == [user] and training.stage_args(runtime)["USER_NAME"] == user
    assert sshd["authorizedkeysfile"] == [f"{mpi['ssh_auth_mount_path']}/authorized_keys"]
    assert sshd["usepam"] == ["no"] and sshd["strictmodes"] == ["no"]
    assert sshd["passwordauthentication"] == ["no"] and sshd["permitrootlogin"] == ["no"]
    # No host key is made at build time: every container of the image would share it.
    assert not any("ssh-keygen" in r for stage in training.stages.values() for r in stage.runs()), (
        "host keys must not be baked into the image"
    )
    start = next(i for i in runtime.all("COPY") if i.args()[-1] == sshd_binary)
    assert start.args()[0] == "docker/mpi/start-sshd" and start.flags()["chmod"] == "0755"
    for key in sshd["hostkey"]:
        assert not key.startswith(mpi["ssh_auth_mount_path"] + "/")
        assert key.startswith(home + "/")
    key_dir = os.path.dirname(sshd["hostkey"][0])
    make_dir = next(r for r in runtime.runs() if f"mkdir -p {key_dir}" in r)
    assert f'chown -R "${{USER_UID}}:${{USER_GID}}" {key_dir}' in make_dir and f"chmod 700 {key_dir}" in make_dir
    assert os.path.dirname(sshd["pidfile"][0]) == key_dir
    assert any(c.args()[0] == "docker/mpi/ssh_config" for c in runtime.all("COPY"))


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_worker_sshd_makes_its_own_host_keys_at_start(tmp_path):
    """Each worker container generates fresh host keys (0600, its user's) before exec'ing sshd with its args."""

    def start(key_dir):
        out = subprocess.run(
            ["sh", str(ROOT / "docker/mpi/start-sshd"), "-De", "-p", "2222"],
            check=True,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "TLPIPE_SSH_HOST_KEY_DIR": str(key_dir), "TLPIPE_SSHD": "echo"},
        )
        return out.stdout.strip(), {p.name: p.read_bytes() for p in key_dir.iterdir()}

    args, first = start(tmp_path / "a")
    assert args == "-De -p 2222"  # sshd gets the MPIJob's arguments unchanged
    assert set(first) == {f"ssh_host_{t}_key{s}" for t in ("ed25519", "rsa") for s in ("", ".pub")}
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == 0o600
    _, second = start(tmp_path / "b")
    assert first["ssh_host_ed25519_key"] != second["ssh_host_ed25519_key"]  # two workers, two identities
    _, again = start(tmp_path / "a")
    assert again == first  # a restarted container keeps the keys it (or a per-job secret) already has


# -- SageMaker image ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sagemaker() -> Dockerfile:
    return Dockerfile.load("docker/sagemaker.Dockerfile")


def test_sagemaker_image_follows_the_container_contracts(sagemaker):
    final = sagemaker.final
    assert final.name == "sagemaker", "the default build target must be the image pushed to ECR"
    assert final.all("ENTRYPOINT")[-1].exec_form() == [], "SageMaker's train/serve argument is the command"
    assert "8080" in final.all("EXPOSE")[0].args()
    copy = next(i for s in sagemaker.order for i in s.all("COPY") if "docker/sagemaker/train" in i.args())
    assert copy.flags()["chmod"] == "0755"
    assert set(copy.args()[:-1]) == {"docker/sagemaker/train", "docker/sagemaker/serve"}
    assert copy.args()[-1].rstrip("/") == "/usr/local/bin"
    for name in ("train", "serve"):
        assert os.access(ROOT / "docker/sagemaker" / name, os.X_OK)
    base = sagemaker.base_image(final)
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", base), base
    assert sagemaker.resolve("${TF_REQUIREMENT}", sagemaker.stages["deps"]) == (
        f"tensorflow[and-cuda]=={constraint_pin('tensorflow-cpu')}"
    )


def _fake_python(tmp_path: Path) -> Path:
    """A ``python`` that records its argv, to see what an entrypoint execs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake.chmod(0o755)
    return bindir


def test_sagemaker_entrypoints_exec_the_project_modules(tmp_path):
    bindir = _fake_python(tmp_path)
    env = {"PATH": f"{bindir}:/usr/bin:/bin"}
    train = subprocess.run([str(ROOT / "docker/sagemaker/train")], env=env, capture_output=True, text=True)
    assert json.loads(train.stdout) == ["-m", "training.finetune"]
    serve = subprocess.run([str(ROOT / "docker/sagemaker/serve")], env=env, capture_output=True, text=True)
    argv = json.loads(serve.stdout)
    assert argv == ["-m", "training.serve", "--model-dir", "/opt/ml/model", "--host", "0.0.0.0", "--port", "8080"]
    # The arguments mean what the contract needs to the server's own parser.
    from training.serve import parse_args

    args = parse_args(argv[2:])
    assert (args.model_dir, args.host, args.port) == ("/opt/ml/model", "0.0.0.0", 8080)
    assert parse_args([]).host == "127.0.0.1"  # only the container entrypoint listens beyond loopback
    # Multi-container endpoints tell the container its port.
    moved = subprocess.run(
        [str(ROOT / "docker/sagemaker/serve")],
        env={**env, "SAGEMAKER_BIND_TO_PORT": "9091"},
        capture_output=True,
        text=True,
    )
    assert json.loads(moved.stdout)[-1] == "9091"


def test_sagemaker_train_reports_a_bad_job_through_the_failure_file(tmp_path):
    # SageMaker's contract end to end with the real module: a job whose hyperparameters are wrong exits
    # non-zero and leaves its reason in <root>/output/failure (DescribeTrainingJob's FailureReason).
    root = tmp_path / "ml"
    (root / "input/config").mkdir(parents=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({"init": "neither"}))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SM_ROOT": str(root),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run([str(ROOT / "docker/sagemaker/train")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "init" in (root / "output/failure").read_text()


def test_sagemaker_serve_fails_fast_without_a_model(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([str(ROOT / "docker/sagemaker/serve")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "/opt/ml/model" in proc.stdout + proc.stderr


def test_localcloud_target_runs_the_local_cloud_on_its_data_dir(sagemaker):
    stage = sagemaker.stages["localcloud"]
    cmd = stage.all("CMD")[-1].exec_form()
    assert cmd[:3] == ["python", "-m", "localcloud"]
    assert cmd[cmd.index("--port") + 1] == "4566" and cmd[cmd.index("--data-dir") + 1] == "/data"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0", "on loopback other containers could not reach it"
    assert any(i.args()[0] == "localcloud/" for i in stage.all("COPY"))
    assert "/opt/tlpipe" in stage.env()["PYTHONPATH"]


# -- Airflow image --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def airflow() -> Dockerfile:
    return Dockerfile.load("docker/airflow.Dockerfile")


def test_airflow_image_is_the_official_image_with_the_pinned_providers(airflow):
    airflow_in = (ROOT / "requirements/airflow.in").read_text()
    pinned = re.search(r"^apache-airflow==(\S+)$", airflow_in, re.M).group(1)
    assert pinned == constraint_pin("apache-airflow")
    assert airflow.base_image(airflow.final) == f"apache/airflow:{pinned}-python3.11"
    install = next(r for r in airflow.final.runs() if "pip install" in r)
    assert "-r /opt/tlpipe/requirements.txt" in install and "-c /tmp/constraints.txt" in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert airflow.resolve("${AIRFLOW_VERSION}", airflow.final) == pinned


def test_airflow_image_layout_matches_the_repository(airflow):
    dests = {i.args()[0]: i.args()[-1] for i in airflow.final.all("COPY") if "from" not in i.flags()}
    for folder in ("dags/", "plugins/", "config/", "training/"):
        assert dests[folder] == f"/opt/airflow/{folder}"
    env = airflow.final.env()
    assert env["PYTHONPATH"] == "/opt/airflow" and env["TLPIPE_HOME"] == "/opt/airflow"
    assert not any("tensorflow" in r for r in airflow.final.runs())


def test_airflow_image_runs_the_plugins_and_dags_without_tensorflow(tmp_path):
    """Lay the repository out as the image does and import every plugin module, every training module the
    plugins and DAGs import (also inside functions, as tasks do), and every DAG file, with TensorFlow, Keras,
    Horovod and NumPy unimportable."""
    home = tmp_path / "opt-airflow"
    home.mkdir()
    for folder in ("dags", "plugins", "config", "training"):
        (home / folder).symlink_to(ROOT / folder)
    script = textwrap.dedent("""
        import ast, importlib, importlib.abc, importlib.util, pathlib, sys

        BLOCKED = {"tensorflow", "keras", "horovod", "numpy"}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is not in the Airflow image")
                return None

        sys.meta_path.insert(0, Block())
        home = pathlib.Path(sys.argv[1])
        wanted = set()
        files = sorted((home / "plugins").rglob("*.py")) + sorted((home / "dags").glob("*.py"))
        for path in files:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("training"):
                    wanted.add(node.module)
                elif isinstance(node, ast.Import):
                    wanted.update(a.name for a in node.names if a.name.startswith("training"))
        def module(path):
            parts = path.relative_to(home).with_suffix("").parts
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

        modules = sorted(wanted) + [module(p) for p in sorted((home / "plugins").rglob("*.py"))]
        for name in modules:
            importlib.import_module(name)
        for path in sorted((home / "dags").glob("*.py")):
            spec = importlib.util.spec_from_file_location(f"dag_{path.stem}", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        print("\\n".join(modules))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TLPIPE", "PYTHONPATH"))}
    env.update(
        {
            "PYTHONPATH": str(home),
            "TLPIPE_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(home)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    imported = proc.stdout.split()
    assert "training.store" in imported and "plugins.tlpipe.pretraining.launchers" in imported


def test_airflow_image_build_checks_pass_on_the_image_layout(tmp_path):
    """The ``python -c`` checks the Airflow image runs at build time, run here on the same layout
    (``/opt/airflow/{dags,plugins,config,training}`` on PYTHONPATH): a check that cannot pass would fail the build."""
    df = Dockerfile.load("docker/airflow.Dockerfile")
    checks = [
        shlex.split(part.strip())[2]
        for run in df.final.runs()
        for part in run.split("&&")
        if part.strip().startswith("python -c")
    ]
    assert len(checks) >= 2, "the image checks its configuration and its DAGs at build time"
    home = tmp_path / "opt-airflow"
    home.mkdir()
    for folder in ("dags", "plugins", "config", "training"):
        (home / folder).symlink_to(ROOT / folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TLPIPE", "PYTHONPATH"))}
    env.update(
        {
            "PYTHONPATH": str(home),
            "TLPIPE_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        }
    )
    for code in checks:
        code = code.replace("/opt/airflow", str(home))
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{code}\n{proc.stderr[-2000:]}{proc.stdout[-500:]}"
