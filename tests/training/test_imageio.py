import io

import pytest
from PIL import Image

from training.imageio import check_image


def _img(fmt, mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, (20, 16), "red" if mode == "RGB" else None).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name,data,fmt",
    [
        ("a.jpg", lambda: _img("JPEG"), "jpeg"),
        ("a.JPEG", lambda: _img("JPEG"), "jpeg"),
        ("cmyk.jpg", lambda: _img("JPEG", "CMYK"), "jpeg"),
        ("gray.jpg", lambda: _img("JPEG", "L"), "jpeg"),
        ("rgba.png", lambda: _img("PNG", "RGBA"), "png"),
        ("png-named.jpg", lambda: _img("PNG"), "png"),
        ("a.gif", lambda: _img("GIF"), "gif"),
        ("a.bmp", lambda: _img("BMP"), "bmp"),
    ],
)
def test_valid_by_content(tmp_path, name, data, fmt):
    p = tmp_path / name
    p.write_bytes(data())
    assert check_image(p)[:2] == (fmt, None)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file"),
        (b"hello world", "not an image"),
        (lambda: _img("JPEG")[:200], "truncated jpeg"),
        (lambda: _img("PNG")[:-20], "truncated png"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "unsupported format: webp"),
    ],
)
def test_invalid_with_reason(tmp_path, data, reason):
    p = tmp_path / "x.jpg"
    p.write_bytes(data() if callable(data) else data)
    fmt, why, _ = check_image(p)
    assert fmt is None and why.startswith(reason)


def test_missing_file(tmp_path):
    fmt, why, _ = check_image(tmp_path / "nope.jpg")
    assert fmt is None and why.startswith("unreadable")
