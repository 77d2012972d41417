"""training.finetune and training.sagemaker: the SageMaker training contract, the transfer recipe, the artifact."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
from _finetune_helpers import make_job

from training import finetune
from training.sagemaker import ContractError, TrainingEnv, decode_value, extract_tar, make_tar, user_hyperparameters


# -- contract helpers ---------------------------------------------------------------------------------------
def test_training_env_paths_follow_root_and_sm_variables(tmp_path, monkeypatch):
    for var in ("SM_ROOT", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR", "SM_CHANNEL_TRAIN"):
        monkeypatch.delenv(var, raising=False)
    assert TrainingEnv.from_env().root.as_posix() == "/opt/ml"
    monkeypatch.setenv("SM_ROOT", str(tmp_path))
    env = TrainingEnv.from_env()
    assert env.model_dir == tmp_path / "model"
    assert env.output_data_dir == tmp_path / "output" / "data"
    assert env.channel("train") == tmp_path / "input" / "data" / "train"
    assert env.failure_path == tmp_path / "output" / "failure"
    monkeypatch.setenv("SM_CHANNEL_TRAIN", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "m"))
    assert env.channel("train") == tmp_path / "elsewhere"
    assert env.model_dir == tmp_path / "m"
    env.write_failure("x" * 5000)
    assert len(env.failure_path.read_text()) == 1024


def test_hyperparameters_decode_sdk_and_plain_strings():
    raw = {
        "init": '"scratch"',
        "epochs_head": "3",
        "compare_scratch": "true",
        "learning_rate_head": "1e-2",
        "image_size": "64",
        "sagemaker_program": '"train.py"',
        "_tuning_objective_metric": "x",
    }
    assert user_hyperparameters(raw) == {
        "init": "scratch",
        "epochs_head": "3",
        "compare_scratch": "true",
        "learning_rate_head": "1e-2",
        "image_size": "64",
    }
    hp = finetune.parse_hyperparameters(raw)
    assert (hp.init, hp.epochs_head, hp.compare_scratch, hp.learning_rate_head, hp.image_size) == (
        "scratch",
        3,
        True,
        0.01,
        (64, 64),
    )
    assert finetune.parse_hyperparameters({"image_size": '"48,40"'}).image_size == (48, 40)
    assert decode_value('"not json') == '"not json'
    with pytest.raises(finetune.FinetuneError, match="epoch_head"):
        finetune.parse_hyperparameters({"epoch_head": "3"})  # a typo is refused, not ignored
    with pytest.raises(finetune.FinetuneError, match="init"):
        finetune.parse_hyperparameters({"init": "imagenet"})
    with pytest.raises(finetune.FinetuneError, match="batch_size"):
        finetune.parse_hyperparameters({"batch_size": "0"})


def test_cli_overrides_become_hyperparameters():
    args, overrides = finetune.parse_args(["train", "--sm-root", "/x", "--epochs-head", "2", "--init=scratch"])
    assert args.sm_root == "/x"
    assert overrides == {"epochs_head": "2", "init": "scratch"}


def test_docstring_documents_every_hyperparameter_and_regex():
    doc = finetune.__doc__
    for name in finetune.Hyperparameters.model_fields:
        assert re.search(rf"^  {name} ", doc, re.M), f"hyperparameter {name} is not documented"
    for d in finetune.METRIC_DEFINITIONS:
        assert f"{d['Name']}" in doc and json.dumps(d["Regex"]) in doc, d


def test_docstring_defaults_match_the_code():
    for name, field in finetune.Hyperparameters.model_fields.items():
        line = re.search(rf"^  {name} .*$", finetune.__doc__, re.M).group(0)
        documented = re.search(r"\(([^()]*)\)\s*$", line).group(1)
        default = field.default
        if default is None:
            continue
        if isinstance(default, bool):
            assert documented == str(default).lower(), name
        elif isinstance(default, tuple):
            assert documented == ",".join(default), name
        elif isinstance(default, (int, float)):
            assert float(documented) == default, name
        else:
            assert documented == str(default), name


def test_metric_regexes_read_only_their_own_keys():
    line = (
        "[finetune] final: val_loss=0.301234 val_accuracy=0.912500 scratch_val_loss=1.010000 "
        "scratch_val_accuracy=0.550000 transfer_gain=-0.362500"
    )
    found = {d["Name"]: re.findall(d["Regex"], line) for d in finetune.METRIC_DEFINITIONS}
    assert found["validation:accuracy"] == ["0.912500"]
    assert found["scratch:validation:accuracy"] == ["0.550000"]
    assert found["validation:loss"] == ["0.301234"]
    assert found["transfer:gain"] == ["-0.362500"]
    assert found["train:loss"] == []
    line = "[finetune] final: val_accuracy=0.9 transfer_val_accuracy=0.850000 selected_scratch=1"
    found = {d["Name"]: re.findall(d["Regex"], line) for d in finetune.METRIC_DEFINITIONS}
    assert found["validation:accuracy"] == ["0.9"] and found["transfer:validation:accuracy"] == ["0.850000"]
    assert found["selected:scratch"] == ["1"]


@pytest.mark.parametrize(
    "policy, transfer, scratch, choice, lost",
    [
        ("best", 0.90, 0.905, "transfer", False),  # within the margin
        ("best", 0.72, 0.93, "scratch", True),
        ("prefer_transfer", 0.72, 0.93, "transfer", True),
        ("fail", 0.72, 0.93, None, True),
        ("fail", 0.93, 0.72, "transfer", False),
    ],
)
def test_the_baseline_judgement(policy, transfer, scratch, choice, lost):
    from training.contracts import judge_baseline

    verdict = judge_baseline(transfer, scratch, policy, 0.01)
    assert (verdict.choice, verdict.transfer_lost) == (choice, lost)
    assert f"{transfer:.4f}" in verdict.reason and f"{scratch:.4f}" in verdict.reason
    assert judge_baseline(0.5, None, policy).choice == "transfer"
    with pytest.raises(ValueError, match="unknown baseline policy"):
        judge_baseline(0.5, 0.6, "coin_flip")


def test_recipes_are_parsed_and_checked():
    assert finetune.parse_hyperparameters({"recipes": "full, linear_probe"}).recipes == ("full", "linear_probe")
    assert finetune.parse_hyperparameters({}).recipes == finetune.RECIPES
    for bad in ("", "full,full", "fine_tune_all"):
        with pytest.raises(finetune.FinetuneError, match="recipes"):
            finetune.parse_hyperparameters({"recipes": bad})


def test_tar_round_trip_and_unsafe_members(tmp_path):
    src = tmp_path / "src"
    (src / "1" / "variables").mkdir(parents=True)
    (src / "1" / "saved_model.pb").write_bytes(b"pb")
    (src / "code").mkdir()
    (src / "code" / "inference.py").write_text("x = 1\n")
    archive = make_tar(src, tmp_path / "model.tar.gz")
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["1", "1/saved_model.pb", "1/variables", "code", "code/inference.py"]
    out = extract_tar(archive, tmp_path / "out")
    assert (out / "1" / "saved_model.pb").read_bytes() == b"pb"
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(src / "code" / "inference.py", arcname="../escape.py")
    with pytest.raises(ContractError, match="unsafe"):
        extract_tar(evil, tmp_path / "out2")


def test_recalibrate_batchnorm_sets_population_statistics():
    import keras
    import tensorflow as tf

    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(name="bn", momentum=0.99)
    model = keras.Model(inputs, bn(inputs))
    bn.trainable = False
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0 + i, 2.0, size=(16, 4)).astype("float32") for i in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(16).map(lambda x: (x,))
    used = finetune.recalibrate_batchnorm(model, ds, 10)
    assert used == 3
    expected = np.mean([b.mean(0) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), expected, rtol=1e-5)
    expected_var = np.mean([b.var(0) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), expected_var, rtol=1e-4)
    assert bn.trainable is False and bn.momentum == 0.99


# -- the job --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_job_writes_servable_artifact_and_metrics(finetuned, world):
    model_dir, out = finetuned["model_dir"], finetuned["output"]
    assert (model_dir / "1" / "saved_model.pb").is_file() and (model_dir / "1" / "variables").is_dir()
    assert (model_dir / "code" / "inference.py").read_text().startswith('"""Request and response handlers')
    assert json.loads((model_dir / "code" / "labels.json").read_text()) == world["classes"]
    assert (model_dir / "model.keras").is_file()
    meta = json.loads((model_dir / "meta.json").read_text())
    assert meta["class_names"] == world["classes"] and meta["image_size"] == [32, 32]
    assert not (out / "failure").exists()

    report = json.loads((out / "data" / "metrics.json").read_text())
    assert report["primary"] == "transfer" and set(report["runs"]) == {"transfer", "scratch"}
    assert report["hyperparameters"]["compare_scratch"] is True
    t = report["runs"]["transfer"]
    assert [e["phase"] for e in t["history"]] == ["head"] * 4 + [report["recipe"]] * 2
    assert t["bn_recalibration_batches"] >= 1 and t["recipe"] == report["recipe"] == meta["recipe"]
    assert len(report["runs"]["scratch"]["history"]) == 6  # the same epoch budget
    # The recipe search: every recipe trained on the same budget after the shared head phase, the best kept.
    search = report["recipe_search"]
    assert set(search) == {"linear_probe", "top_blocks", "full"}
    for c in search.values():
        assert [e["phase"] for e in c["history"][:4]] == ["head"] * 4 and len(c["history"]) == 6
        assert c["history"][:4] == t["history"][:4]  # phase 1 is shared
    assert search["full"]["unfrozen_layers"] > search["top_blocks"]["unfrozen_layers"] > 0
    assert search["linear_probe"]["unfrozen_layers"] == 0

    def best(c):
        return max((e["val_accuracy"], -e["val_loss"]) for e in c["history"])

    assert best(search[report["recipe"]]) == max(best(c) for c in search.values())
    assert report["baseline"]["policy"] == "prefer_transfer" and report["baseline"]["written"] == "transfer"
    m = report["metrics"]
    assert m["transfer:gain"] == pytest.approx(m["validation:accuracy"] - m["scratch:validation:accuracy"])
    assert m["transfer:test_gain"] == pytest.approx(m["test:accuracy"] - m["scratch:test:accuracy"])
    assert m["transfer:validation:accuracy"] == m["validation:accuracy"] and m["selected:scratch"] == 0.0
    assert report["counts"]["test"] == report["counts"]["validation"]
    assert t["test_images"] == t["val_images"] == sum(report["counts"]["validation"].values())

    # The exported signature takes raw bytes and agrees with the Keras model the job kept.
    import keras
    import tensorflow as tf

    import training.model  # noqa: F401
    from training.data import decode_and_resize

    fn = tf.saved_model.load(str(model_dir / "1")).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["image_bytes"]
    files = sorted(p for p in world["validation"].rglob("*") if p.is_file())[:6]
    probs = fn(image_bytes=tf.constant([p.read_bytes() for p in files]))["probabilities"].numpy()
    assert probs.shape == (6, len(world["classes"]))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-4)
    kmodel = keras.models.load_model(model_dir / "model.keras", compile=False)
    direct = kmodel(tf.stack([decode_and_resize(tf.constant(p.read_bytes()), (32, 32)) for p in files]))
    np.testing.assert_allclose(probs, np.asarray(direct), atol=1e-4)


@pytest.mark.slow
def test_log_lines_feed_the_metric_definitions(finetuned):
    """What SageMaker would put in FinalMetricDataList (the last match of each regex) equals metrics.json."""
    report = json.loads((finetuned["output"] / "data" / "metrics.json").read_text())
    final = {}
    for d in finetune.METRIC_DEFINITIONS:
        matches = re.findall(d["Regex"], finetuned["stdout"])
        assert matches, f"no log line for {d['Name']}"
        final[d["Name"]] = float(matches[-1])
    assert set(final) == set(report["metrics"])
    for name, value in report["metrics"].items():
        assert final[name] == pytest.approx(value, abs=1e-6), name
    assert len(re.findall(r"transfer head epoch \d+/6", finetuned["stdout"])) == 4


@pytest.mark.slow
def test_model_tar_round_trip_keeps_the_layout(finetuned, tmp_path):
    archive = make_tar(finetuned["model_dir"], tmp_path / "model.tar.gz")
    out = extract_tar(archive, tmp_path / "untarred")
    want = sorted(str(p.relative_to(finetuned["model_dir"])) for p in finetuned["model_dir"].rglob("*"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == want
    with tarfile.open(archive) as tar:
        assert "1/saved_model.pb" in tar.getnames() and "code/inference.py" in tar.getnames()


@pytest.mark.slow
def test_scratch_init_without_pretrained_channel(world, tmp_path):
    root = make_job(
        tmp_path,
        world,
        {
            "init": "scratch",
            "width": "8",
            "image_size": "32",
            "epochs_head": "1",
            "epochs_finetune": "1",
            "compare_scratch": "true",
        },
        channels=("train", "validation"),
    )
    assert finetune.main(["--sm-root", str(root)]) == 0
    report = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert report["primary"] == "scratch" and set(report["runs"]) == {"scratch"}  # compare_scratch is moot
    assert len(report["runs"]["scratch"]["history"]) == 2
    assert report["pretrained"] is None
    assert (root / "model" / "1" / "saved_model.pb").is_file()


@pytest.mark.slow
def test_pretrained_channel_as_tarball_and_subsampling(world, tmp_path):
    archive = make_tar(world["pretrained"], tmp_path / "pretrained.tar.gz")
    root = make_job(
        tmp_path / "job",
        world,
        {"images_per_class": "3", "epochs_head": "1", "epochs_finetune": "0", "augment": "false", "model_version": "7"},
        pretrained=archive,
    )
    assert finetune.main(["--sm-root", str(root)]) == 0
    report = json.loads((root / "output" / "data" / "metrics.json").read_text())
    assert report["counts"]["train"] == {c: 3 for c in world["classes"]}
    assert [e["phase"] for e in report["runs"]["transfer"]["history"]] == ["head"]
    assert (root / "model" / "7" / "saved_model.pb").is_file()


def test_subsets_are_nested(world, tmp_path):
    env = TrainingEnv(make_job(tmp_path, world, channels=("train", "validation")))
    small = finetune.load_domain(env, finetune.parse_hyperparameters({"images_per_class": "2"}))
    large = finetune.load_domain(env, finetune.parse_hyperparameters({"images_per_class": "5"}))
    assert len(small.train) == 2 * len(world["classes"])
    assert set(small.train.paths) < set(large.train.paths)


# -- failures: a clear reason in output/failure and a non-zero exit ------------------------------------------
def _fails(root, match: str, capsys) -> str:
    assert finetune.main(["--sm-root", str(root)]) == 1
    reason = (root / "output" / "failure").read_text()
    assert re.search(match, reason), reason
    assert f"[finetune] error: {reason}" in capsys.readouterr().out
    return reason


def test_missing_channel_fails(world, tmp_path, capsys):
    _fails(make_job(tmp_path, world, channels=("pretrained", "train")), r"missing channel 'validation'", capsys)


def test_empty_class_fails(world, tmp_path, capsys):
    root = make_job(tmp_path, world)
    cls = world["classes"][0]
    for p in (root / "input" / "data" / "train" / cls).iterdir():
        p.unlink()
    (root / "input" / "data" / "train" / cls / "broken.jpg").write_bytes(b"not an image")
    _fails(root, rf"empty class in the train channel.*{cls}", capsys)


def test_corrupt_pretrained_model_fails(world, tmp_path, capsys):
    root = make_job(tmp_path, world)
    (root / "input" / "data" / "pretrained" / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    _fails(root, r"corrupt pretrained artifact: model.keras does not load", capsys)


def test_corrupt_pretrained_archive_fails(world, tmp_path, capsys):
    bad = tmp_path / "best.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08 not really gzip")
    _fails(make_job(tmp_path / "job", world, pretrained=bad), r"corrupt pretrained artifact best.tar.gz", capsys)


def test_image_size_mismatch_fails(world, tmp_path, capsys):
    _fails(make_job(tmp_path, world, {"image_size": "64"}), r"image size mismatch.*\[64, 64\].*\[32, 32\]", capsys)


def test_bad_hyperparameter_fails_and_a_rerun_clears_the_failure(world, tmp_path, capsys):
    root = make_job(tmp_path, world, {"learning_rate_head": "fast"}, channels=("train", "validation"))
    _fails(root, r"invalid hyperparameters: learning_rate_head", capsys)
    (root / "input" / "config" / "hyperparameters.json").write_text("[1, 2]")
    _fails(root, r"must hold a JSON object", capsys)


def test_discriminative_learning_rates_slow_the_backbone_by_the_ratio():
    import keras
    import numpy as np

    from training.finetune.recipes import discriminative_adamw

    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="backbone")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    slow = {v.path for v in model.get_layer("backbone").trainable_weights}
    model.compile(optimizer=discriminative_adamw(0.01, 0.0, slow, 0.1), loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    model.train_on_batch(np.ones((8, 4), "float32"), np.zeros((8, 2), "float32"))
    steps = [np.abs(np.array(a) - b).max() for a, b in zip(model.get_weights(), before)]
    # Adam's first step is the learning rate per weight: 0.01 for the head, 0.001 for the backbone.
    np.testing.assert_allclose(steps, [0.001, 0.001, 0.01, 0.01], rtol=1e-3)
