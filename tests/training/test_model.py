import numpy as np
import pytest

keras = pytest.importorskip("keras")

from training.model import Preprocess, build_model, set_jitter  # noqa: E402


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_preprocess_scales_to_unit_range_at_inference():
    x = _images()
    out = np.asarray(Preprocess()(x, training=False))
    np.testing.assert_allclose(out, x / 127.5 - 1.0, atol=1e-6)


def test_preprocess_jitters_each_image_at_training_time_only_when_on():
    x = _images()
    layer = Preprocess(seed=1)
    a, b = np.asarray(layer(x, training=True)), np.asarray(layer(x, training=True))
    plain = x / 127.5 - 1.0
    assert not np.allclose(a, plain) and not np.allclose(a, b)  # jittered, and differently per call
    # Per image an affine map of the plain scaling: contrast within ±20% around the image mean.
    for i in range(len(x)):
        slope = np.polyfit(plain[i].ravel(), a[i].ravel(), 1)[0]
        assert 0.8 - 1e-4 <= slope <= 1.2 + 1e-4
    layer.jitter = False
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), plain, atol=1e-6)


def test_model_with_preprocess_round_trips_through_keras_file(tmp_path):
    model = build_model(3, (16, 16))
    assert set_jitter(model, False) is True and set_jitter(model, True) is False
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = _images(2)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-5)
    assert isinstance(loaded.get_layer("preprocess"), Preprocess)
