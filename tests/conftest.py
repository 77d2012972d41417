"""Shared fixtures: a tiny generated image tree and its curated manifest, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The shared fixtures, registered once for every test module (modules import only the helpers they call).
pytest_plugins = [
    "localcloud_fixtures",
    "_finetune_helpers",
    "transfer_learning_deploy_fixtures",
    "pretraining_fixtures",
    "onprem_fixtures",
    "chaos_record",
]


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory) -> Path:
    """8 classes, 40 -> 16 images, with the odd and broken files real collections have."""
    from training.synth_data import generate

    out = tmp_path_factory.mktemp("tiny") / "raw"
    generate(out, classes=8, seed=0, largest=40, smallest=16)
    return out


@pytest.fixture(scope="session")
def tiny_manifest(tiny_tree, tmp_path_factory) -> Path:
    """The tiny tree curated with a threshold of 25: 5 kept classes, 2 domain classes."""
    from training.curate import curate

    out = tmp_path_factory.mktemp("tiny-curated")
    curate(tiny_tree, out, min_images=25, domain_classes=2, val_fraction=0.25, progress=False)
    return out / "manifest.json"


@pytest.fixture(scope="session")
def moto_url():
    """moto's S3 API server on a free loopback port, for the training core's s3:// paths."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_test_env(monkeypatch) -> dict:
    """Dummy credentials for the moto server, in this process's environment; returned for subprocesses."""
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
