import json

import pytest

from training import store as st


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, moto_url, aws_test_env):
    if request.param == "local":
        return str(tmp_path / "store"), st.Store()
    store = st.Store(endpoint_url=moto_url)
    bucket = f"b{abs(hash(str(tmp_path))) % 10**8}"
    store.s3.create_bucket(Bucket=bucket)
    return f"s3://{bucket}/ckpt", store


def test_objects_round_trip(root):
    base, store = root
    uri = st.join(base, "a", "best.json")
    assert not store.exists(uri)
    store.write_json(uri, {"epoch": 3})
    assert store.exists(uri)
    assert store.read_json(uri) == {"epoch": 3}
    store.write_json(uri, {"epoch": 4})  # overwrite is atomic
    assert store.read_json(uri)["epoch"] == 4
    store.delete(uri)
    assert not store.exists(uri)


def test_directories(root, tmp_path):
    base, store = root
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.keras").write_bytes(b"x" * 1000)
    (src / "sub" / "meta.json").write_text(json.dumps({"k": 1}))
    for name in ("0002", "0001", "0010"):
        store.upload_dir(src, st.join(base, "epochs", name))
    assert store.list_dirs(st.join(base, "epochs")) == ["0001", "0002", "0010"]
    files = dict(store.walk_files(st.join(base, "epochs", "0002")))
    assert files == {"model.keras": 1000, "sub/meta.json": len(json.dumps({"k": 1}))}
    out = store.download_dir(st.join(base, "epochs", "0010"), tmp_path / "dl")
    assert (out / "sub" / "meta.json").read_text() == json.dumps({"k": 1})
    store.copy_dir(st.join(base, "epochs", "0001"), st.join(base, "best"))
    assert store.read_bytes(st.join(base, "best", "model.keras")) == b"x" * 1000
    assert store.list_dirs(st.join(base, "missing")) == []


def test_split_s3_rejects_other_schemes():
    with pytest.raises(ValueError):
        st.split_s3("/local/path")
    assert st.split_s3("s3://bucket/a/b") == ("bucket", "a/b")


@pytest.mark.parametrize(
    "planted",
    [
        "../../planted.txt",
        "../sibling/planted.txt",
        "/abs/planted.txt",
        "a//planted.txt",
        "./planted.txt",
        "a/../../planted.txt",
    ],
)
def test_a_download_refuses_keys_that_leave_the_target(planted, tmp_path, moto_url, aws_test_env):
    """A key planted in the checkpoint store (every training pod holds its keys) cannot write outside the
    directory the export or the resume downloads ``best/`` into."""
    store = st.Store(endpoint_url=moto_url)
    bucket = f"t{abs(hash(planted + str(tmp_path))) % 10**8}"
    store.s3.create_bucket(Bucket=bucket)
    store.write_text(f"s3://{bucket}/run/best/model.keras", "weights")
    store.s3.put_object(Bucket=bucket, Key=f"run/best/{planted}", Body=b"owned")
    target = tmp_path / "work" / "export" / "best"
    with pytest.raises(st.UnsafeKey, match=f"refusing to download object 'run/best/{planted}'"):
        store.download_dir(f"s3://{bucket}/run/best", target)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()], "nothing may be written, inside or out"


def test_a_download_skips_folder_markers_and_keeps_ordinary_names(tmp_path, moto_url, aws_test_env):
    store = st.Store(endpoint_url=moto_url)
    store.s3.create_bucket(Bucket="markers")
    for key in ("run/best/", "run/best/sub/", "run/best/sub/..weights.keras", "run/best/a.b/c"):
        store.s3.put_object(Bucket="markers", Key=key, Body=b"" if key.endswith("/") else b"x")
    out = store.download_dir("s3://markers/run/best", tmp_path / "dl")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a.b/c",
        "sub/..weights.keras",
    ]


def test_credentials_from_a_directory_of_files(tmp_path, monkeypatch):
    """What a Kubernetes secret mounted as a volume looks like; the environment never holds the keys."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    st.write_credentials_dir(tmp_path, "AKIAFILE", "from-a-file")
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
        "AWS_ACCESS_KEY_ID": 0o600,
        "AWS_SECRET_ACCESS_KEY": 0o600,
    }
    monkeypatch.setenv(st.CREDENTIALS_DIR_ENV, str(tmp_path))
    creds = st.s3_client("http://127.0.0.1:1")._request_signer._credentials
    assert (creds.access_key, creds.secret_key) == ("AKIAFILE", "from-a-file")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").unlink()
    with pytest.raises(FileNotFoundError, match="lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY"):
        st.s3_client("http://127.0.0.1:1")
