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
