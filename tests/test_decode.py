"""Decoding through img2dataset's Resizer, with the probe and normalisation around it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from unicurate.config import ResizeConfig
from unicurate.download.fetch import Decoder, Fetched


def _noise(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _decode(data, **cfg):
    dec = Decoder(ResizeConfig(**{"image_size": 128, **cfg}))
    out = Fetched(reasons=[])
    img = dec.probe(data, out)
    if img is not None:
        dec.resize(data, img, out)
    return out


def _stored(out):
    return Image.open(io.BytesIO(out.image))


def test_jpeg_resized_keep_ratio():
    out = _decode(_encode(_noise(400, 200), "JPEG"))
    assert out.reasons == []
    assert (out.original_width, out.original_height) == (400, 200)
    assert (out.width, out.height) == (256, 128)  # smallest side to image_size
    assert _stored(out).format == "JPEG" and out.image_format == "jpg" and out.original_format == "jpg"
    assert out.phash and len(out.phash) == 16


def test_exif_rotation_applied():
    img = _noise(300, 150)
    img.paste((255, 0, 0), (0, 0, 60, 150))  # red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    out = _decode(_encode(img, "JPEG", exif=exif.tobytes(), quality=95), resize_mode="no")
    assert out.reasons == []
    assert (out.original_width, out.original_height) == (150, 300)
    got = _stored(out).convert("RGB")
    assert got.size == (150, 300)
    top = np.asarray(got)[:20, :, :].mean(axis=(0, 1))  # displayed: the red band is on top
    assert top[0] > 150 and top[1] < 100


def test_truncated_jpeg_is_decode_error():
    data = _encode(_noise(600, 400), "JPEG", quality=90)
    out = _decode(data[: len(data) * 6 // 10])
    assert out.reasons == ["decode_error"] and "truncated" in out.error.lower()


def test_not_an_image_and_bomb():
    out = _decode(b"<html><body>hello</body></html>")
    assert out.reasons == ["not_an_image"]
    bomb = _encode(Image.new("L", (4000, 4000)), "PNG")  # 16 MP, tiny file
    out = _decode(bomb, max_image_pixels=1_000_000)
    assert out.reasons == ["decompression_bomb"]
    assert (out.original_width, out.original_height) == (4000, 4000) and out.image is None


@pytest.mark.parametrize("make,fmt,kw", [
    (lambda: _noise(200, 100, "CMYK"), "JPEG", {}),
    (lambda: Image.fromarray((np.arange(200 * 100, dtype=np.uint16).reshape(100, 200) * 3)), "PNG", {}),
    (lambda: _noise(200, 100, "RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG", {"transparency": 0}),
    (lambda: _noise(200, 100, "RGBA"), "PNG", {}),
    (lambda: _noise(200, 100, "L"), "JPEG", {}),
    (lambda: _noise(200, 100, "RGB"), "WEBP", {}),
    (lambda: _noise(200, 100, "RGB"), "BMP", {}),
])
def test_unusual_modes_and_formats_decode(make, fmt, kw):
    out = _decode(_encode(make(), fmt, **kw))
    assert out.reasons == [], out.error
    assert (out.original_width, out.original_height) == (200, 100)
    assert _stored(out).size == (out.width, out.height)


def test_animated_gif_first_frame():
    frames = [_noise(120, 90, seed=i).convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = _decode(buf.getvalue())
    assert out.reasons == [] and out.original_format == "gif"
    assert (out.original_width, out.original_height) == (120, 90)


def test_img2dataset_parts_load_without_its_cli():
    """The resizer and downloader load without img2dataset's __init__ (which imports torch via webdataset);
    a later `import img2dataset` is the real package and reuses the loaded submodules."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from unicurate.config import ResizeConfig\n"
            "from unicurate.download import fetch\n"
            "r = fetch.make_resizer(ResizeConfig()); d = fetch.img2dataset_part('downloader')\n"
            "assert 'torch' not in sys.modules and 'img2dataset' not in sys.modules, sorted(sys.modules)\n"
            "import img2dataset\n"
            "from img2dataset.resizer import Resizer\n"
            "assert callable(img2dataset.download) and type(r) is Resizer\n"
            "assert d.download_image is sys.modules['img2dataset.downloader'].download_image\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


def test_upscaling_past_what_can_be_stored_is_refused_before_resizing():
    thin = _encode(Image.new("L", (1, 300), 128), "PNG")
    out = _decode(thin, image_size=256, resize_only_if_bigger=False)  # 256 x 76800: past JPEG's 65500
    assert out.image is None and out.reasons == ["decode_error"]
    assert "would give 256x76800, past the jpg limit of 65500 px" in out.error
    out = _decode(thin, image_size=64, resize_only_if_bigger=False, encode_format="png", encode_quality=1,
                  max_image_pixels=1_000_000)
    assert out.image is None and out.reasons == ["decompression_bomb"]  # 64 x 19200 = 1.2 M pixels
    assert "would give 64x19200 = 1228800 pixels, over resize.max_image_pixels 1000000" in out.error
    out = _decode(thin, image_size=64, resize_only_if_bigger=True)  # never upscaled: stored as it is
    assert out.image is not None and (out.width, out.height) == (1, 300)
