"""A deterministic sample web for the offline demo and the tests.

Generated images with captions, plus the broken cases web data is full of,
served by a background HTTP server on 127.0.0.1 only. Each :class:`Case` says
what a correct curate run does with it (``expected``: ``"kept"`` or one reject
reason code from :mod:`unicurate.schema`).

Everything is generated in memory by the constructor, deterministically from
``(n_images, seed, slow_seconds)`` for a given Pillow/numpy install.
"""

from __future__ import annotations

import functools
import http.server
import io
import math
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from unicurate.schema import Reason

__all__ = ["Case", "SampleWeb", "expected_counts"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "blue": (35, 70, 215), "green": (35, 160, 60), "yellow": (245, 215, 30),
    "orange": (245, 135, 20), "purple": (130, 50, 185), "black": (20, 20, 20), "white": (245, 245, 245),
    "pink": (245, 125, 180), "teal": (20, 150, 150), "brown": (120, 70, 30), "grey": (128, 128, 128),
}
SHAPES = ("circle", "square", "rectangle", "triangle", "line")
SIGN_WORDS = ("SALE", "OPEN", "HELLO", "CAFE", "EXIT", "STOP", "MENU", "WELCOME", "NO PARKING", "FRESH BREAD")
MEME_WORDS = ("MONDAY AGAIN", "SHIP IT", "NOT TODAY", "IT WORKS", "TRUST ME", "ONE MORE TEST")
NUMBERS = ("a", "two", "three", "four", "five", "six")
LICENSES = ("CC-BY-4.0", "CC0-1.0", "CC-BY-SA-4.0")
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
EXIF_ORIENTATION = 0x0112

Headers = tuple[tuple[str, str], ...]
Route = tuple[int, Headers, bytes, float]  # status, headers, body, delay in seconds


@dataclass(frozen=True)
class Case:
    """One url of the sample web and what a correct curate run does with it."""

    name: str  # unique, e.g. "img-007", "http-404", "slow"
    path: str  # URL path served, e.g. "/img/img-007.jpg"
    caption: str | None
    expected: str  # "kept" or one reject reason code (a Reason value)
    note: str  # one line for humans


# ------------------------------------------------------------------ drawing
def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    if fmt == "JPEG":
        kw.setdefault("quality", 90)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _count_phrase(n: int, colour: str, shape: str) -> str:
    word = NUMBERS[n - 1] if n <= len(NUMBERS) else str(n)
    if word == "a" and colour[0] in "aeiou":
        word = "an"
    return f"{word} {colour} {shape}{'s' if n > 1 else ''}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _background(rng: np.random.Generator, w: int, h: int, c1: str, c2: str) -> Image.Image:
    """A random-direction gradient between two colours with soft blotches (cheap: upscaled 4x4 grid)."""
    angle = rng.uniform(0, 2 * math.pi)
    g = np.linspace(-0.5, 0.5, 4)
    t = 0.5 + math.cos(angle) * g[None, :] + math.sin(angle) * g[:, None] + rng.normal(0, 0.12, (4, 4))
    t = t.clip(0, 1)[:, :, None]
    grid = np.array(COLOURS[c1], float) * (1 - t) + np.array(COLOURS[c2], float) * t
    grid += rng.normal(0, 10, grid.shape)
    small = Image.fromarray(grid.clip(0, 255).astype(np.uint8), "RGB")
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _scene(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, str]:
    """A gradient background with 2-5 random shapes; returns the image and a caption describing it."""
    names = list(COLOURS)
    i1, i2 = rng.choice(len(names), 2, replace=False)
    bg1, bg2 = names[int(i1)], names[int(i2)]
    img = _background(rng, w, h, bg1, bg2)
    draw = ImageDraw.Draw(img)
    fg = [c for c in names if c not in (bg1, bg2)]
    drawn: Counter[tuple[str, str]] = Counter()
    side = min(w, h)
    for _ in range(int(rng.integers(2, 6))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = fg[int(rng.integers(len(fg)))]
        fill = COLOURS[colour]
        luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
        edge = COLOURS["black"] if luma > 90 else COLOURS["white"]  # contrast for grayscale/phash
        ew = max(2, side // 100)
        s = int(rng.integers(max(6, side // 6), max(7, side // 2)))
        x, y = int(rng.integers(0, max(1, w - s))), int(rng.integers(0, max(1, h - s)))
        if shape == "circle":
            draw.ellipse([x, y, x + s, y + s], fill=fill, outline=edge, width=ew)
        elif shape == "square":
            draw.rectangle([x, y, x + s, y + s], fill=fill, outline=edge, width=ew)
        elif shape == "rectangle":
            s2 = int(s * rng.uniform(0.35, 0.65))
            box = [x, y, x + s, y + s2] if rng.random() < 0.5 else [x, y, x + s2, y + s]
            draw.rectangle(box, fill=fill, outline=edge, width=ew)
        elif shape == "triangle":
            draw.polygon([(x, y + s), (x + s // 2, y), (x + s, y + s)], fill=fill, outline=edge, width=ew)
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            draw.line([(x, y), (x2, y2)], fill=fill, width=max(3, side // 40))
        drawn[(colour, shape)] += 1
    parts = [_count_phrase(n, colour, shape) for (colour, shape), n in drawn.items()]
    return img, f"{_join(parts)} on a {bg1} and {bg2} background"


def _fit_font(draw: ImageDraw.ImageDraw, text: str, max_w: int, size: int, stroke: int = 0) -> Any:
    """The largest default font (from ``size`` down) whose rendering of ``text`` fits ``max_w``."""
    while size > 10:
        font = _font(size)
        box = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        if box[2] - box[0] <= max_w:
            return font
        size = int(size * 0.85)
    return _font(10)


def _overlay_text(rng: np.random.Generator, img: Image.Image, index: int) -> tuple[Image.Image, str]:
    """Draw a large sign or meme-like caption; returns the image and a caption prefix naming the text."""
    draw = ImageDraw.Draw(img)
    w, h = img.size
    if rng.random() < 0.5:
        word = SIGN_WORDS[index % len(SIGN_WORDS)]
        font = _fit_font(draw, word, int(w * 0.7), max(14, h // 4))
        l, t, r, b = draw.textbbox((0, 0), word, font=font)
        tw, th = r - l, b - t
        x, y = (w - tw) // 2, int(h * rng.uniform(0.25, 0.55))
        pad = max(4, th // 4)
        panel = ("white", "yellow")[int(rng.integers(2))]
        draw.rounded_rectangle([x - pad, y - pad, x + tw + pad, y + th + pad], radius=pad,
                               fill=COLOURS[panel], outline=COLOURS["black"], width=max(2, pad // 3))
        draw.text((x - l, y - t), word, font=font, fill=COLOURS["black"])
        return img, f'a {panel} sign that says "{word}" in front of '
    word = MEME_WORDS[index % len(MEME_WORDS)]
    stroke = max(2, h // 80)
    font = _fit_font(draw, word, int(w * 0.92), max(14, h // 6), stroke)
    l, t, r, b = draw.textbbox((0, 0), word, font=font, stroke_width=stroke)
    y = max(2, h // 30) if rng.random() < 0.5 else h - (b - t) - max(2, h // 30)
    draw.text(((w - (r - l)) // 2 - l, y - t), word, font=font, fill=COLOURS["white"],
              stroke_width=stroke, stroke_fill=COLOURS["black"])
    return img, f'a meme with the text "{word}" over '


def _random_size(rng: np.random.Generator) -> tuple[int, int]:
    """About 120-1400 px a side, aspect ratio between 1:2 and 2:1."""
    long = int(rng.integers(150, 1401))
    short = max(120, round(long / rng.uniform(1.0, 2.0)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _raw(status: int, body: bytes = b"", content_type: str = "image/jpeg", delay: float = 0.0,
         extra: Headers = ()) -> Route:
    return status, (("Content-Type", content_type),) + extra, body, delay


_NOT_FOUND: Route = _raw(404, b"not found", "text/plain; charset=utf-8")


# ------------------------------------------------------------------- server
class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent downloaders: the default backlog of 5 drops SYNs


def _handler_for(web: SampleWeb) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "unicurate-sampleweb/1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            status, headers, body, delay = web.route(self.path)
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for key, value in headers:
                    if key == "Location" and value.startswith("/") and web.base_url:
                        value = web.base_url + value
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if with_body and body:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. timed out)
                pass
            self.close_connection = True

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    return Handler


# ---------------------------------------------------------------- sample web
class SampleWeb:
    """Generated image-text cases served on 127.0.0.1 by a threaded HTTP server."""

    HOST = "127.0.0.1"
    NETWORK = f"{HOST}/32"  # what a run serving it adds to download.allowed_networks (run.demoweb.sample_web_for)

    def __init__(self, n_images: int = 60, seed: int = 0, slow_seconds: float = 5.0):
        if n_images < 2:
            raise ValueError("n_images must be at least 2 (the duplicate cases refer to the first two)")
        self.n_images = n_images
        self.seed = seed
        self.slow_seconds = slow_seconds
        self.base_url: str | None = None
        self.cases: list[Case] = []
        self._routes: dict[str, Route] = {}
        self._captions: set[str] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._build(np.random.default_rng(seed))

    # ---------------------------------------------------------- content
    def _add(self, case: Case, route: Route | None) -> None:
        self.cases.append(case)
        if case.caption:
            self._captions.add(case.caption)
        if route is not None:
            self._routes[case.path] = route

    def _unique_scene(self, rng: np.random.Generator, w: int, h: int, prefix: str = "") -> tuple[Image.Image, str]:
        """A scene whose caption (with ``prefix``) no earlier case has; redraws on a clash."""
        while True:
            img, caption = _scene(rng, w, h)
            if prefix + caption not in self._captions:
                return img, prefix + caption

    def _good_image(self, rng: np.random.Generator, i: int) -> tuple[Case, Route]:
        w, h = _random_size(rng)
        fmt = ("JPEG",) * 6 + ("PNG", "WEBP")
        fmt_i, mode = fmt[i % len(fmt)], "RGB"
        if i == 3:
            fmt_i, mode = "JPEG", "L"
        elif i == 5:
            fmt_i, mode = "PNG", "RGBA"
        with_text = i % 5 == 2
        while True:
            img, caption = _scene(rng, w, h)
            what = f"{w}x{h} {fmt_i}"
            if with_text:
                img, prefix = _overlay_text(rng, img, i // 5)
                caption = prefix + caption
                what += " with large overlaid text"
            if mode == "L":
                img, caption, what = img.convert("L"), "a black and white picture of " + caption, what + ", grayscale"
            elif mode == "RGBA":
                alpha = Image.new("L", img.size, 255)
                ImageDraw.Draw(alpha).ellipse([w // 8, h // 8, w * 5 // 8, h * 5 // 8], fill=0)
                img = img.convert("RGBA")
                img.putalpha(alpha)
                caption += " with a transparent oval cut out"
                what += ", RGBA with a transparent hole"
            if caption not in self._captions:
                break
        name = f"img-{i:03d}"
        path = f"/img/{name}.{EXTENSIONS[fmt_i]}"
        return Case(name, path, caption, "kept", f"good image: {what}"), _raw(200, _encode(img, fmt_i),
                                                                                CONTENT_TYPES[fmt_i])

    def _jpeg(self, rng: np.random.Generator, w: int, h: int, prefix: str = "", **kw: Any) -> tuple[bytes, str]:
        img, caption = self._unique_scene(rng, w, h, prefix)
        return _encode(img, "JPEG", **kw), caption

    def _build(self, rng: np.random.Generator) -> None:
        for i in range(self.n_images):
            self._add(*self._good_image(rng, i))
        first, second = self.cases[0], self.cases[1]

        img, caption = self._unique_scene(rng, 400, 300, "a photo taken sideways: ")
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6
        self._add(Case("exif-rotated", "/special/exif-rotated.jpg", caption, "kept",
                       "JPEG stored 400x300 with EXIF orientation 6 (rotate 90°): correct readers see 300x400"),
                  _raw(200, _encode(img, "JPEG", exif=exif.tobytes())))

        # The redirect target is a path of its own (not a listed case): were it a listed image, the
        # redirected copy would be an exact duplicate of it and could not be "kept".
        body, caption = self._jpeg(rng, 500, 375, "a picture that moved: ")
        self._routes["/moved/target.jpg"] = _raw(200, body)
        self._add(Case("redirect", "/special/redirect.jpg", caption, "kept",
                       "302 to /moved/target.jpg, a 500x375 JPEG listed nowhere else"),
                  _raw(302, b"", "text/plain; charset=utf-8", extra=(("Location", "/moved/target.jpg"),)))
        self._add(Case("http-404", "/special/missing.jpg", "a picture that is gone", Reason.HTTP_ERROR.value,
                       "answers 404"),
                  _raw(404, b"not found", "text/plain; charset=utf-8"))
        self._add(Case("http-500", "/special/error.jpg", "a server that fails", Reason.HTTP_ERROR.value, "answers 500"),
                  _raw(500, b"internal error", "text/plain; charset=utf-8"))
        body, caption = self._jpeg(rng, 300, 200)
        self._add(Case("slow", "/special/slow.jpg", caption, Reason.TIMEOUT.value,
                       f"valid JPEG sent after {self.slow_seconds:g} s, past the download timeout"),
                  _raw(200, body, delay=self.slow_seconds))
        html = b"<!doctype html><html><head><title>Photo</title></head><body><h1>Hello</h1></body></html>"
        self._add(Case("not-an-image", "/special/page.jpg", "a web page pretending to be a photo",
                       Reason.NOT_AN_IMAGE.value,
                       "HTML page served with Content-Type image/jpeg"), _raw(200, html))
        body, caption = self._jpeg(rng, 600, 400)
        self._add(Case("truncated-jpeg", "/special/truncated.jpg", caption, Reason.DECODE_ERROR.value,
                       "600x400 JPEG cut to its first 60% of bytes"), _raw(200, body[: len(body) * 6 // 10]))
        self._add(Case("empty-body", "/special/empty.jpg", "an empty answer", Reason.EMPTY_RESPONSE.value,
                       "200, Content-Type image/jpeg, Content-Length 0"), _raw(200, b""))
        _, first_headers, first_body, _ = self._routes[first.path]
        self._add(Case("duplicate-image", "/special/copy-of-first.jpg", "the same picture under another url",
                       Reason.DUPLICATE.value, f"exactly the bytes of {first.name} under another path"),
                  (200, first_headers, first_body, 0.0))
        body, caption = self._jpeg(rng, 16, 16, "a tiny icon of ")
        self._add(Case("tiny", "/special/tiny.jpg", caption, Reason.TOO_SMALL.value, "16x16 JPEG"), _raw(200, body))
        body, caption = self._jpeg(rng, 1600, 80, "a long banner with ")
        self._add(Case("extreme-aspect", "/special/banner.jpg", caption, Reason.ASPECT_RATIO.value,
                       "1600x80 JPEG (20:1)"),
                  _raw(200, body))
        body, caption = self._jpeg(rng, 320, 240)
        self._add(Case("robots-noai", "/special/noai.jpg", caption, Reason.ROBOTS_DISALLOWED.value,
                       "valid JPEG served with X-Robots-Tag: noai"),
                  _raw(200, body, extra=(("X-Robots-Tag", "noai"),)))
        body, _ = self._jpeg(rng, 320, 240)
        self._add(Case("empty-caption", "/special/no-caption.jpg", "", Reason.CAPTION_TOO_SHORT.value,
                       "valid distinct JPEG whose caption is empty"), _raw(200, body))
        self._add(Case("duplicate-url", second.path, "the second picture again, listed twice",
                       Reason.DUPLICATE_URL.value,
                       f"same url as {second.name}, another caption"), None)

    # ------------------------------------------------------------ serving
    def route(self, path: str) -> Route:
        """(status, headers, body, delay_seconds) served for a request path; unknown paths are 404."""
        return self._routes.get(path.split("?", 1)[0], _NOT_FOUND)

    def start(self, port: int = 0) -> SampleWeb:
        """Serve on 127.0.0.1:port (0 = ephemeral; a busy port falls back to an ephemeral one)."""
        if self._server is not None:
            return self
        handler = _handler_for(self)
        try:
            server = _Server((self.HOST, port), handler)
        except OSError:
            if not port:
                raise
            server = _Server((self.HOST, 0), handler)
            warnings.warn(f"sample web: port {port} is busy, serving on port {server.server_address[1]} instead",
                          RuntimeWarning, stacklevel=2)
        self._server = server
        self.base_url = f"http://{self.HOST}:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="sampleweb", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (idempotent). ``base_url`` keeps the last address."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SampleWeb:  # noqa: PYI034 - typing.Self needs 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------- inputs
    def rows(self) -> list[dict[str, str | None]]:
        """One input row per case, in case order (needs ``start()``: urls carry the port)."""
        if self.base_url is None:
            raise RuntimeError("start() the sample web first: its urls depend on the port")
        return [
            {"url": self.base_url + c.path, "caption": c.caption, "license": LICENSES[i % len(LICENSES)],
             "expected": c.expected}
            for i, c in enumerate(self.cases)
        ]

    def write_input(self, path: str | Path) -> Path:
        """Write :meth:`rows` as a Parquet file (all columns string); returns its path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([(k, pa.string()) for k in ("url", "caption", "license", "expected")])
        pq.write_table(pa.Table.from_pylist(self.rows(), schema=schema), p)
        return p


def expected_counts(cases: Iterable[Case]) -> dict[str, int]:
    """Number of cases per expected outcome ("kept" or a reason code)."""
    return dict(Counter(c.expected for c in cases))
