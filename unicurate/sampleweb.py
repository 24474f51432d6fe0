"""A deterministic sample web for the offline demo and the tests.

Generated images with captions plus the broken cases web data is full of,
served by a background HTTP server on 127.0.0.1 only. Each case says what a
correct curate run does with it (``expected``: "kept" or a reason code).
"""

from __future__ import annotations

import http.server
import io
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 70), "yellow": (240, 210, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "black": (20, 20, 20), "white": (245, 245, 245),
    "pink": (240, 130, 180), "teal": (30, 160, 160),
}
SHAPES = ("circle", "square", "triangle", "stripe")
WORDS = ("SALE", "OPEN", "HELLO", "CAFE", "EXIT", "STOP", "MENU", "2026")
_CT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    caption: Optional[str]
    expected: str
    note: str


@dataclass
class _Route:
    status: int = 200
    headers: tuple = ()
    body: bytes = b""
    delay: float = 0.0


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _scene(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, str]:
    """A gradient background with a few random shapes; returns the image and a caption."""
    names = list(COLOURS)
    bg1, bg2 = rng.choice(len(names), 2, replace=False)
    c1, c2 = np.array(COLOURS[names[bg1]], float), np.array(COLOURS[names[bg2]], float)
    t = np.linspace(0, 1, w)[None, :, None] * 0.6 + np.linspace(0, 1, h)[:, None, None] * 0.4
    arr = (c1 * (1 - t) + c2 * t) + rng.normal(0, 6, (h, w, 3))
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    parts = []
    for _ in range(int(rng.integers(2, 5))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = names[int(rng.integers(len(names)))]
        s = int(rng.integers(max(8, min(w, h) // 8), max(9, min(w, h) // 2)))
        x, y = int(rng.integers(0, max(1, w - s))), int(rng.integers(0, max(1, h - s)))
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse([x, y, x + s, y + s], fill=fill)
        elif shape == "square":
            draw.rectangle([x, y, x + s, y + s], fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y + s), (x + s // 2, y), (x + s, y + s)], fill=fill)
        else:
            draw.line([(x, y), (x + s, y + s)], fill=fill, width=max(2, s // 8))
        parts.append(f"a {colour} {shape}")
    caption = ", ".join(parts[:-1]) + f" and {parts[-1]} on a {names[bg1]} to {names[bg2]} background"
    return img, caption


def _with_text(img: Image.Image, word: str) -> Image.Image:
    draw = ImageDraw.Draw(img)
    size = max(12, img.width // 6)
    font = ImageFont.load_default(size=size)
    x, y = img.width // 10, img.height // 3
    draw.rectangle([x - 6, y - 6, x + size * len(word) * 0.7 + 6, y + size + 6], fill=(250, 250, 250))
    draw.text((x, y), word, fill=(10, 10, 10), font=font)
    return img


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent downloaders: the default backlog of 5 drops SYNs


class SampleWeb:
    """Generated cases served on 127.0.0.1 by a threaded HTTP server."""

    def __init__(self, n_images: int = 60, seed: int = 0, slow_seconds: float = 5.0):
        self.n_images = n_images
        self.seed = seed
        self.slow_seconds = slow_seconds
        self.base_url: Optional[str] = None
        self.cases: list[Case] = []
        self._routes: dict[str, _Route] = {}
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._build()

    # ----------------------------------------------------------- content
    def _add(self, case: Case, route: Optional[_Route]) -> None:
        self.cases.append(case)
        if route is not None:
            self._routes[case.path] = route

    def _image(self, rng, name, w, h, fmt="JPEG", text=None, mode="RGB", **kw) -> tuple[bytes, str, str]:
        img, caption = _scene(rng, w, h)
        if text:
            img = _with_text(img, text)
            caption = f"a sign that says {text}: {caption}"
        if mode != "RGB":
            img = img.convert(mode)
        if fmt == "JPEG":
            kw.setdefault("quality", 90)
        body = _encode(img, fmt, **kw)
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
        return body, caption, f"/img/{name}.{ext}"

    def _build(self) -> None:
        rng = np.random.default_rng(self.seed)
        fmts = ["JPEG"] * 6 + ["PNG", "WEBP"]
        first_body = None
        second_url_path = None
        for i in range(self.n_images):
            name = f"img-{i:03d}"
            w = int(rng.integers(120, 1400))
            h = int(np.clip(w * rng.uniform(0.5, 2.0), 120, 1400))
            fmt, mode, note = fmts[i % len(fmts)], "RGB", "generated scene"
            kw = {}
            if i == 3:
                fmt, mode, note = "JPEG", "L", "grayscale JPEG"
            elif i == 5:
                fmt, mode, note = "PNG", "RGBA", "RGBA PNG with transparency"
            text = WORDS[i % len(WORDS)] if i % 5 == 2 else None
            if text:
                note += f" with overlaid text {text!r}"
            if mode == "RGBA":
                img, caption = _scene(rng, w, h)
                img = img.convert("RGBA")
                alpha = Image.new("L", img.size, 255)
                ImageDraw.Draw(alpha).ellipse([0, 0, w // 2, h // 2], fill=0)
                img.putalpha(alpha)
                body, path = _encode(img, "PNG"), f"/img/{name}.png"
            else:
                body, caption, path = self._image(rng, name, w, h, fmt, text=text, mode=mode, **kw)
            self._add(Case(name, path, caption, "kept", f"{note}, {w}x{h} {fmt}"),
                      _Route(headers=(("Content-Type", _CT[fmt]),), body=body))
            if i == 0:
                first_body = body
            if i == 1:
                second_url_path = path

        # EXIF orientation 6: stored landscape 400x300, displayed portrait 300x400
        img, caption = _scene(rng, 400, 300)
        exif = Image.Exif()
        exif[0x0112] = 6
        self._add(Case("exif-rotated", "/special/exif-rotated.jpg", "rotated photo: " + caption, "kept",
                       "JPEG with EXIF orientation 6; correct readers see 300x400"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG", exif=exif.tobytes())))
        img, caption = _scene(rng, 500, 375)
        self._routes["/moved/target.jpg"] = _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG"))
        self._add(Case("redirect", "/special/redirect.jpg", "a moved picture: " + caption, "kept",
                       "302 to /moved/target.jpg"),
                  _Route(302, (("Location", "/moved/target.jpg"),)))
        self._add(Case("http-404", "/special/missing.jpg", "an image that is gone", "http_error", "404"),
                  _Route(404, (("Content-Type", "text/plain"),), b"not found"))
        self._add(Case("http-500", "/special/error.jpg", "a server that fails", "http_error", "500"),
                  _Route(500, (("Content-Type", "text/plain"),), b"boom"))
        img, caption = _scene(rng, 300, 200)
        self._add(Case("slow", "/special/slow.jpg", caption, "timeout",
                       f"answers after {self.slow_seconds}s, past the download timeout"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG"),
                         delay=self.slow_seconds))
        self._add(Case("not-an-image", "/special/page.jpg", "a web page pretending to be a photo", "not_an_image",
                       "HTML served as image/jpeg"),
                  _Route(headers=(("Content-Type", "image/jpeg"),),
                         body=b"<!doctype html><html><body><h1>Hello</h1></body></html>"))
        img, caption = _scene(rng, 600, 400)
        full = _encode(img, "JPEG", quality=90)
        self._add(Case("truncated-jpeg", "/special/truncated.jpg", caption, "decode_error",
                       "JPEG cut at 60% of its bytes"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=full[: len(full) * 6 // 10]))
        self._add(Case("empty-body", "/special/empty.jpg", "an empty answer", "empty_response",
                       "200 with Content-Length 0"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=b""))
        self._add(Case("duplicate-image", "/special/copy-of-first.jpg", "the same picture under another url",
                       "duplicate", "same bytes as the first image"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=first_body))
        img, caption = _scene(rng, 16, 16)
        self._add(Case("tiny", "/special/tiny.jpg", "a tiny icon of " + caption, "too_small", "16x16"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG")))
        img, caption = _scene(rng, 1600, 80)
        self._add(Case("extreme-aspect", "/special/banner.jpg", "a long banner with " + caption, "aspect_ratio",
                       "1600x80 banner"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG")))
        img, caption = _scene(rng, 320, 240)
        self._add(Case("robots-noai", "/special/noai.jpg", caption, "robots_disallowed",
                       "served with X-Robots-Tag: noai"),
                  _Route(headers=(("Content-Type", "image/jpeg"), ("X-Robots-Tag", "noai")), body=_encode(img, "JPEG")))
        img, _ = _scene(rng, 320, 240)
        self._add(Case("empty-caption", "/special/no-caption.jpg", "", "caption_too_short", "caption is empty"),
                  _Route(headers=(("Content-Type", "image/jpeg"),), body=_encode(img, "JPEG")))
        self._add(Case("duplicate-url", second_url_path, "the second image again, listed twice", "duplicate_url",
                       "same url as the second image"), None)

    # ------------------------------------------------------------- serving
    def route(self, path: str) -> _Route:
        return self._routes.get(path.split("?", 1)[0], _Route(404, (("Content-Type", "text/plain"),), b"not found"))

    def start(self, port: int = 0) -> "SampleWeb":
        if self._server is not None:
            return self
        web = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, with_body: bool) -> None:
                r = web.route(self.path)
                if r.delay:
                    time.sleep(r.delay)
                try:
                    self.send_response(r.status)
                    for k, v in r.headers:
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(r.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if with_body and r.body:
                        self.wfile.write(r.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def do_GET(self):  # noqa: N802
                self._answer(True)

            def do_HEAD(self):  # noqa: N802
                self._answer(False)

        try:
            server = _Server(("127.0.0.1", port), Handler)
        except OSError:
            if not port:
                raise
            server = _Server(("127.0.0.1", 0), Handler)
            warnings.warn(f"port {port} is busy; sample web serves on port {server.server_address[1]} instead", stacklevel=2)
        self._server = server
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="sampleweb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._thread = None

    def __enter__(self) -> "SampleWeb":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------- inputs
    def rows(self) -> list[dict]:
        if self.base_url is None:
            raise RuntimeError("start() the sample web first: urls depend on its port")
        licenses = ("CC-BY-4.0", "CC0-1.0", "CC-BY-SA-4.0")
        return [
            {"url": self.base_url + c.path, "caption": c.caption, "license": licenses[i % 3], "expected": c.expected}
            for i, c in enumerate(self.cases)
        ]

    def write_input(self, path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([(k, pa.string()) for k in ("url", "caption", "license", "expected")])
        pq.write_table(pa.Table.from_pylist(self.rows(), schema=schema), p)
        return p


def expected_counts(cases) -> dict[str, int]:
    return dict(Counter(c.expected for c in cases))
