"""One TrainingSpec, one argv: rendering, launcher resolution and what each launcher gets from prepare_run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from plugins.tlpipe.config import load_config
from plugins.tlpipe.pretraining.spec import TrainingSpec
from plugins.tlpipe.pretraining.steps import LAUNCH_TASKS, RunParams, prepare_run, resolve_launcher, run_key

BASE = dict(
    manifest="/data/curated/r1/manifest.json",
    checkpoint_dir="s3://ckpt/pretrain/r1",
    epochs=48,
    model="resnet50",
    image_size=224,
    batch_size=64,
    learning_rate=0.0005,
)


def test_argv_is_rendered_exactly():
    spec = TrainingSpec(
        launcher="pod",
        workers=1,
        gpus_per_worker=4,
        s3_endpoint_url="http://store:9000",
        threads=2,
        extra_args=("--seed", "3"),
        **BASE,
    )
    assert spec.argv() == [
        "horovodrun",
        "-np",
        "4",
        "python",
        "-m",
        "training.pretrain",
        "--manifest",
        "/data/curated/r1/manifest.json",
        "--checkpoint-dir",
        "s3://ckpt/pretrain/r1",
        "--epochs",
        "48",
        "--model",
        "resnet50",
        "--image-size",
        "224",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.0005",
        "--s3-endpoint-url",
        "http://store:9000",
        "--threads",
        "2",
        "--seed",
        "3",
    ]


def test_mpijob_spec_adds_hostfile_and_ssh_port_only():
    pod = TrainingSpec(launcher="pod", workers=1, gpus_per_worker=2, **BASE)
    mpi = TrainingSpec(
        launcher="mpijob", workers=3, gpus_per_worker=2, hostfile="/etc/mpi/hostfile", ssh_port=2222, **BASE
    )
    assert mpi.num_processes == 6 and mpi.slots_per_worker == 2
    assert mpi.horovod_argv() == ["horovodrun", "-np", "6", "--hostfile", "/etc/mpi/hostfile", "-p", "2222"]
    assert mpi.pretrain_argv() == pod.pretrain_argv()


def test_cpu_workers_run_one_process_each():
    spec = TrainingSpec(launcher="local", workers=2, gpus_per_worker=0, **BASE)
    assert spec.num_processes == 2 and spec.argv()[:3] == ["horovodrun", "-np", "2"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(launcher="pod", workers=2), "one worker"),
        (dict(launcher="mpijob", workers=2), "hostfile"),
        (dict(launcher="local", workers=0), "greater than or equal"),
        (dict(launcher="local", workers=1, unknown=1), "Extra inputs"),
    ],
)
def test_inconsistent_specs_are_refused(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        TrainingSpec(**{**BASE, **kwargs})


def test_training_key_depends_on_what_shapes_the_model_only():
    a = TrainingSpec(launcher="pod", workers=1, gpus_per_worker=2, **BASE)
    b = TrainingSpec(
        launcher="mpijob",
        workers=2,
        gpus_per_worker=1,
        hostfile="/h",
        ssh_port=2222,
        **{**BASE, "checkpoint_dir": "/elsewhere"},
    )
    c = TrainingSpec(launcher="pod", workers=1, gpus_per_worker=2, **{**BASE, "epochs": 47})
    assert a.training_key() == b.training_key()  # same world size, same data and parameters
    assert a.training_key() != c.training_key()


@pytest.mark.parametrize(
    "launcher, profile, workers, expected",
    [
        ("auto", "local", 4, "local"),
        ("auto", "production", 1, "pod"),
        ("auto", "production", 2, "mpijob"),
        ("pod", "local", 1, "pod"),
        ("mpijob", "production", 3, "mpijob"),
        ("local", "production", 2, "local"),
    ],
)
def test_resolve_launcher(launcher, profile, workers, expected):
    assert resolve_launcher(launcher, profile, workers) == expected


def _params(cfg, **kw):
    t, d = cfg.training, cfg.dataset
    return {
        "dataset_uri": d.uri,
        "min_images_per_class": d.min_images_per_class,
        "domain_classes": d.domain_classes,
        "val_fraction": d.val_fraction,
        "epochs": t.epochs,
        "workers": t.workers,
        "gpus_per_worker": t.gpus_per_worker,
        "image_size": t.image_size,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "model": t.model,
        "launcher": t.launcher,
        "force": False,
        **kw,
    }


def test_prepare_run_gives_every_launcher_the_same_training_command(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # a GPU host, where the local launcher fits the production run
    cfg = load_config(profile="production", environ={"TLPIPE__CHECKPOINTS__ENDPOINT_URL": "http://store:9000"})
    runs = {
        launcher: prepare_run(
            cfg,
            _params(cfg, launcher=launcher, workers=workers),
            "general_pretraining",
            "manual__2025-01-01T00:00:00+00:00",
        )
        for launcher, workers in (("local", 2), ("pod", 1), ("mpijob", 2))
    }
    specs = {k: TrainingSpec.model_validate(v["training"]) for k, v in runs.items()}
    tails = {k: s.pretrain_argv()[1:] for k, s in specs.items()}  # everything after the interpreter
    assert tails["local"] == tails["pod"] == tails["mpijob"]
    assert specs["local"].python == sys.executable
    assert specs["local"].horovodrun == str(Path(sys.executable).parent / "horovodrun")
    assert specs["pod"].python == "python" and specs["mpijob"].hostfile == cfg.mpijob.hostfile
    assert "--s3-endpoint-url" in specs["pod"].argv()
    for launcher, run in runs.items():
        assert run["launch_task"] == LAUNCH_TASKS[launcher]
        assert run["checkpoint_uri"].startswith("s3://tlpipe-checkpoints/pretrain/")
        assert (run["mpijob_yaml"] is not None) == (launcher == "mpijob")
    # One checkpoint directory per run, the same for every try of it.
    assert len({r["checkpoint_uri"] for r in runs.values()}) == 1
    assert run_key("manual__2025-01-01T00:00:00+00:00") == run_key("manual__2025-01-01T00:00:00+00:00")
    assert run_key("a") != run_key("b")


def test_prepare_run_renders_the_curate_command():
    cfg = load_config(environ={})
    run = prepare_run(cfg, _params(cfg, domain_classes=["ring-dots", "cross-plain"]), "general_pretraining", "r1")
    argv = run["curate_argv"]
    assert argv[:3] == [sys.executable, "-m", "training.curate"]
    assert argv[argv.index("--domain-classes") + 1] == "ring-dots,cross-plain"
    assert argv[argv.index("--out") + 1] == run["curated_dir"]
    assert run["manifest_path"] == str(Path(run["curated_dir"]) / "manifest.json")
    assert run["launcher"] == "local"


@pytest.mark.parametrize(
    "changes, message",
    [(dict(launcher="pod", workers=2), "runs one worker"), (dict(launcher="mpijob", workers=1), "two or more")],
)
def test_run_params_are_checked_together(changes, message):
    cfg = load_config(environ={})
    with pytest.raises(ValidationError, match=message):
        RunParams.model_validate(_params(cfg, **changes))


def test_prepare_run_confines_the_dataset_to_the_data_roots(tmp_path):
    from plugins.tlpipe.pretraining.steps import confine_dataset

    root = tmp_path / "data"
    (root / "raw").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)  # a link inside the root that points out of it
    cfg = load_config(profile="local", environ={"TLPIPE__DATASET__URI": str(root / "raw")})
    assert cfg.dataset.roots == [str(root)]
    prepare_run(cfg, _params(cfg), "general_pretraining", "manual__1")  # below the root: accepted
    for uri, words in (
        ("/etc", "outside the data roots"),
        (str(tmp_path / ".ssh"), "outside the data roots"),
        (str(root / "escape" / "x"), "outside the data roots"),
        (str(root / ".." / "data" / "raw"), "'..' segment"),
        (str(root / "raw") + "\n", "control character"),
    ):
        with pytest.raises(ValueError, match=words):
            prepare_run(cfg, _params(cfg, dataset_uri=uri), "general_pretraining", "manual__1")
    assert confine_dataset("s3://data/raw/x", ["s3://data/raw"]) == "s3://data/raw/x"
    with pytest.raises(ValueError, match="outside"):
        confine_dataset("s3://data/rawer", ["s3://data/raw"])


def test_the_local_launcher_starts_no_more_processes_than_cores():
    from plugins.tlpipe.pretraining.steps import check_local_capacity

    check_local_capacity("local", 2, 0, cores=2)
    check_local_capacity("mpijob", 256, 16, cores=2)  # a cluster's capacity is the scheduler's to judge
    with pytest.raises(ValueError, match="4096 Horovod processes .* 2 cores"):
        check_local_capacity("local", 256, 16, cores=2)
    cfg = load_config(profile="local", environ={})
    with pytest.raises(ValueError, match="256 Horovod processes"):
        prepare_run(cfg, _params(cfg, workers=256, launcher="local"), "general_pretraining", "manual__1")
