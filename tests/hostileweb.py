"""The bad-input corpus: hostile web content served on 127.0.0.1, and the input files that list it.

Each :class:`Case` is one input row and says what a correct curate run does with it: ``expected`` is the
exact set of reject reason codes, or empty for "kept". Kept cases carry a ``reference`` picture (RGB, the
way a browser shows it: EXIF-oriented, first frame, transparency over white, 16-bit scaled to 8-bit), which
the stored image must match after resizing.

The server answers at the byte level where the case needs it: connection resets, a body dripped one byte at
a time, Content-Length lies, a chunked body that never ends. Host names (``*.test``) are resolved by the
launcher below (``python tests/hostileweb.py --hosts NAME=IP,... -- unicurate ARGS``), which stands in for
DNS: it maps those names in ``socket.getaddrinfo``, runs the unicurate CLI in the same process, and writes
the process's peak RSS to a file. It also fences the process in: a connection to anything but loopback is
refused and recorded (the stand-in DNS hands out addresses such as 169.254.169.254, and nothing may ever be
sent there, even by a broken guard).
"""

from __future__ import annotations

import csv
import errno
import gzip
import hashlib
import io
import ipaddress
import json
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from unicurate.schema import Reason

Responder = Callable[["_Handler"], None]

# what the corpus run is configured with (tests/test_bad_input.py); the cases are built around these numbers
TIMEOUT = 1.0  # download.timeout: one socket read
MAX_SECONDS = 2.5  # download.max_seconds: the whole download
MAX_BYTES = 16 * 1024 * 1024  # download.max_bytes
MIN_SIDE = 32  # filters.min_width / min_height
MAX_ASPECT = 10.0  # filters.max_aspect_ratio
MAX_WORDS = 200  # filters.caption_max_words
IMAGE_SIZE = 256  # resize.image_size


@dataclass
class Case:
    name: str
    url: str  # absolute, or a path on the corpus server ("/...")
    caption: object  # str, or bytes written raw into the CSV (not valid UTF-8)
    expected: frozenset[str]  # reject reasons; empty = kept
    note: str
    reference: Optional[Image.Image] = field(default=None, repr=False)  # kept cases: what the image shows
    original_size: Optional[tuple[int, int]] = None  # kept cases: EXIF-oriented size of the source
    jsonl: bool = False  # listed in the JSONL input file instead of the CSV one
    body_sha256: Optional[str] = None  # kept cases served with a Content-Encoding: sha256 of the decoded body


# ---------------------------------------------------------------- pictures
def _picture(seed: int, w: int, h: int) -> Image.Image:
    """A distinct picture: a colour gradient and a few boxes, deterministic per seed."""
    rng = np.random.default_rng(seed)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    row = (c1 * (1 - t) + c2 * t).astype(np.uint8)
    img = Image.fromarray(np.repeat(row, h, axis=0), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, max(1, w - w // 4))), int(rng.integers(0, max(1, h - h // 4)))
        draw.rectangle([x0, y0, x0 + max(1, w // 4), y0 + max(1, h // 4)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A 1-bit PNG whose header claims ``width x height`` pixels; its data is a few bytes of a zlib stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compressobj().compress(b"\0" * 4096)  # the start of a stream: never finished
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)


def deflate_raw(data: bytes) -> bytes:
    """A raw deflate stream (RFC 1951, no zlib header): what some servers send as ``Content-Encoding: deflate``."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def gzip_bomb(size: int, block: int = 1 << 20) -> bytes:
    """A valid gzip stream of ``size`` zero bytes (a multiple of ``block``), about ``size / 1000`` bytes long.

    After a full flush the compressor starts afresh, so one compressed block of zeros is repeated rather than
    ``size`` bytes compressed: building a 2 GiB bomb takes a moment, not minutes."""
    assert size % block == 0
    zeros = b"\0" * block
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, mtime 0, unknown OS
    return header + segment * (size // block) + c.flush(zlib.Z_FINISH) + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _over_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


# ------------------------------------------------------------------ server
class _Handler:
    """One accepted connection: the parsed request line and the raw socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.path = ""

    def read_request(self) -> bool:
        data = b""
        self.sock.settimeout(10)
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            data += chunk
            if len(data) > 1 << 16:
                return False
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        self.path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
        return True

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def head(self, status: int, headers: dict[str, str], reason: str = "X") -> None:
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close"]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def reset(self) -> None:
        """Close with a TCP RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def answer(status: int, body: bytes = b"", content_type: str = "image/jpeg", delay: float = 0.0,
           headers: Optional[dict[str, str]] = None, length: Optional[int] = None) -> Responder:
    """A plain response; ``length`` overrides the Content-Length header (a lie)."""

    def respond(h: _Handler) -> None:
        if delay:
            time.sleep(delay)
        h.head(status, {"Content-Type": content_type, "Content-Length": str(len(body) if length is None else length),
                        **(headers or {})})
        h.send(body)

    return respond


def redirect(status: int, location: str) -> Responder:
    return answer(status, b"", "text/plain", headers={"Location": location})


def chunked(body: bytes, headers: Optional[dict[str, str]] = None, size: int = 4096) -> Responder:
    """``body`` in ``Transfer-Encoding: chunked`` frames of ``size`` bytes."""

    def respond(h: _Handler) -> None:
        h.head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked", **(headers or {})})
        for i in range(0, len(body), size):
            block = body[i:i + size]
            h.send(f"{len(block):x}\r\n".encode() + block + b"\r\n")
        h.send(b"0\r\n\r\n")

    return respond


def drip(body: bytes, every: float) -> Responder:
    def respond(h: _Handler) -> None:
        h.head(200, {"Content-Type": "image/jpeg", "Content-Length": str(len(body))})
        for i in range(len(body)):
            h.send(body[i:i + 1])
            time.sleep(every)

    return respond


def endless_chunked(chunk: int = 1 << 20) -> Responder:
    def respond(h: _Handler) -> None:
        h.head(200, {"Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"})
        block = b"\xff" * chunk
        frame = f"{len(block):x}\r\n".encode() + block + b"\r\n"
        h.send(f"{2:x}\r\n".encode() + b"\xff\xd8\r\n")  # a JPEG start, then noise for ever
        for _ in range(1024):  # 1 GiB at most: the client must stop long before
            h.send(frame)

    return respond


def reset_after_request() -> Responder:
    return lambda h: h.reset()


def close_after_request() -> Responder:
    return lambda h: h.sock.close()


class HostileWeb:
    """The corpus: cases plus a threaded raw-socket server on 127.0.0.1."""

    def __init__(self):
        self.routes: dict[str, Responder] = {}
        self.cases: list[Case] = []
        self.hosts: dict[str, list[str]] = {}  # what the launcher's stand-in DNS answers
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self.port = 0

    # ------------------------------------------------------------ serving
    def start(self) -> "HostileWeb":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        self._sock, self.port = sock, sock.getsockname()[1]
        threading.Thread(target=self._accept, name="hostileweb", daemon=True).start()
        self._build()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "HostileWeb":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h = _Handler(conn)
        try:
            if not h.read_request():
                return
            with self._lock:
                self.hits[h.path] = self.hits.get(h.path, 0) + 1
            self.routes.get(h.path, answer(404, b"not found", "text/plain"))(h)
        except OSError:  # the client gave up (timeout, size cap): expected for several cases
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    # ------------------------------------------------------------- corpus
    def _route(self, path: str, responder: Responder) -> str:
        wire = quote(path, safe="/%:@!$&'()*+,;=-._~")
        self.routes[wire] = responder
        return path

    def _case(self, name: str, url: str, expected=(), note: str = "", caption: object = None, **kw) -> Case:
        words = name.replace("-", " ")
        case = Case(name, url, f"test picture for the {words} case" if caption is None else caption,
                    frozenset(Reason(r).value for r in expected), note, **kw)
        self.cases.append(case)
        return case

    def _kept(self, name: str, path: str, body: bytes, reference: Image.Image, note: str,
              content_type: str = "image/jpeg", url: Optional[str] = None,
              original_size: Optional[tuple[int, int]] = None, responder: Optional[Responder] = None,
              **kw) -> Case:
        self._route(path, responder or answer(200, body, content_type))
        return self._case(name, url or path, (), note, reference=reference.convert("RGB"),
                          original_size=original_size or reference.size, **kw)

    def _build(self) -> None:
        seed = iter(range(1000, 2000))
        pic = lambda w=320, h=240: _picture(next(seed), w, h)  # noqa: E731

        # -------- redirects
        img = pic()
        self._route("/final/chain.jpg", answer(200, _encode(img, "JPEG", quality=92)))
        self._route("/r/301", redirect(301, "/r/302"))
        self._route("/r/302", redirect(302, "/r/307"))
        self._route("/r/307", redirect(307, "/final/chain.jpg"))
        self._case("redirect-chain", "/r/301", (), "301 -> 302 -> 307 -> a JPEG", reference=img,
                   original_size=img.size)
        self._route("/loop/a", redirect(302, "/loop/b"))
        self._route("/loop/b", redirect(302, "/loop/a"))
        self._case("redirect-loop", "/loop/a", ["too_many_redirects"], "302 /loop/a <-> /loop/b for ever")
        for i in range(12):
            self._route(f"/hops/{i}", redirect(302, f"/hops/{i + 1}"))
        self._route("/hops/12", answer(200, _encode(pic(), "JPEG")))
        self._case("redirect-12-hops", "/hops/0", ["too_many_redirects"], "12 redirects before the image")
        self._route("/r/to-private", redirect(302, "http://10.0.0.1/internal.jpg"))
        self._case("redirect-to-private-ip", "/r/to-private", ["blocked_address"], "302 to 10.0.0.1")
        self._route("/r/to-metadata", redirect(302, "http://169.254.169.254/latest/meta-data/"))
        self._case("redirect-to-cloud-metadata", "/r/to-metadata", ["blocked_address"], "302 to 169.254.169.254")
        self._route("/r/to-file", redirect(302, "file:///etc/passwd"))
        self._case("redirect-to-file", "/r/to-file", ["unsupported_scheme"], "302 to file:///etc/passwd")
        self.hosts["rebind.test"] = ["127.0.0.2"]
        self._route("/r/to-rebind", redirect(302, f"http://rebind.test:{self.port}/img.jpg"))
        self._case("redirect-to-name-on-loopback", "/r/to-rebind", ["blocked_address"],
                   "302 to a name that resolves to 127.0.0.2 (loopback, not allowed)")
        self.hosts["metadata.test"] = ["169.254.169.254"]
        self._route("/r/to-metadata-name", redirect(302, f"http://metadata.test:{self.port}/latest/meta-data/"))
        self._case("redirect-to-name-on-cloud-metadata", "/r/to-metadata-name", ["blocked_address"],
                   "302 to a name that resolves to 169.254.169.254")

        # -------- DNS: names that look public
        self.hosts["cdn.images.test"] = ["127.0.0.3"]
        self._case("name-resolving-to-loopback", f"http://cdn.images.test:{self.port}/final/chain.jpg",
                   ["blocked_address"], "public-looking name resolving to 127.0.0.3")
        self.hosts["mixed.images.test"] = ["93.184.216.34", "10.9.8.7"]
        self._case("name-with-one-private-address", f"http://mixed.images.test:{self.port}/x.jpg",
                   ["blocked_address"], "resolves to a public and a private address")
        self._case("unresolvable-name", f"http://nowhere.invalid:{self.port}/x.jpg", ["connection_error"],
                   "a name no DNS answers")
        self._case("name-resolving-to-cloud-metadata", f"http://metadata.test:{self.port}/latest/meta-data/",
                   ["blocked_address"], "a name resolving to 169.254.169.254 (the instance-metadata service)")
        self.hosts["ec2-metadata-v6.test"] = ["fd00:ec2::254"]
        self._case("name-resolving-to-aws-ipv6-metadata", f"http://ec2-metadata-v6.test:{self.port}/latest/meta-data/",
                   ["blocked_address"], "a name resolving to fd00:ec2::254 (AWS's IPv6 instance-metadata service)")

        # -------- HTTP errors
        for status in (403, 404, 429, 500, 503):
            extra = {"Retry-After": "3600"} if status in (429, 503) else {}
            self._route(f"/status/{status}", answer(status, b"<h1>error</h1>", "text/html", headers=extra))
            self._case(f"http-{status}", f"/status/{status}", ["http_error"], f"answers {status}")

        # -------- slow and broken connections
        self._route("/slow/headers", answer(200, _encode(pic(), "JPEG"), delay=TIMEOUT * 3))
        self._case("slow-headers", "/slow/headers", ["timeout"], f"nothing for {TIMEOUT * 3:g} s")
        self._route("/slow/drip", drip(_encode(pic(), "JPEG"), every=TIMEOUT / 4))
        self._case("slow-drip", "/slow/drip", ["timeout"],
                   f"one byte every {TIMEOUT / 4:g} s: each read is fast, the whole is past max_seconds")
        self._route("/broken/reset", reset_after_request())
        self._case("connection-reset", "/broken/reset", ["connection_error"], "TCP RST after the request")
        self._route("/broken/close", close_after_request())
        self._case("closed-without-response", "/broken/close", ["connection_error"], "closed after the request")
        body = _encode(pic(), "JPEG")
        self._route("/lie/short-body", answer(200, body[: len(body) // 3], length=len(body)))
        self._case("content-length-more-than-body", "/lie/short-body", ["connection_error"],
                   "Content-Length says N, a third of N arrives, then the connection closes")
        self._route("/lie/long-body", answer(200, body, length=len(body) // 2))
        self._case("content-length-less-than-body", "/lie/long-body", ["decode_error"],
                   "Content-Length half the body: what it announces is a truncated JPEG")
        self._route("/lie/huge", answer(200, body, length=50 * 1024 ** 3))
        self._case("content-length-huge", "/lie/huge", ["too_large"], "Content-Length 50 GiB, small body")
        self._route("/big/endless", endless_chunked())
        self._case("chunked-past-max-bytes", "/big/endless", ["too_large"],
                   "chunked, no Content-Length, 1 MiB chunks until the client stops")

        # -------- not images
        self._route("/not/empty.jpg", answer(200, b""))
        self._case("empty-body", "/not/empty.jpg", ["empty_response"], "200 with Content-Length 0")
        self._route("/not/page.jpg", answer(200, b"<!doctype html><html><body>hi</body></html>"))
        self._case("html-as-jpeg", "/not/page.jpg", ["not_an_image"], "an HTML page, Content-Type image/jpeg")
        svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="200"><rect width="300" height="200"/></svg>'
        self._route("/not/vector.svg", answer(200, svg, "image/svg+xml"))
        self._case("svg", "/not/vector.svg", ["not_an_image"], "an SVG drawing")
        jpeg = _encode(pic(400, 300), "JPEG")
        self._route("/bad/truncated.jpg", answer(200, jpeg[: len(jpeg) // 2]))
        self._case("truncated-jpeg", "/bad/truncated.jpg", ["decode_error"], "first half of a JPEG")
        png = _encode(pic(400, 300), "PNG")
        self._route("/bad/truncated.png", answer(200, png[: len(png) // 2], "image/png"))
        self._case("truncated-png", "/bad/truncated.png", ["decode_error"], "first half of a PNG")
        self._route("/bad/bomb.png", answer(200, bomb_png(100_000, 100_000), "image/png"))
        self._case("decompression-bomb", "/bad/bomb.png", ["decompression_bomb"],
                   "a PNG of a few hundred bytes claiming 100000x100000 pixels")

        # -------- images that need care, all kept
        grad = (np.linspace(0, 65535, 300, dtype=np.float64)[None, :].repeat(200, axis=0)).astype(np.uint16)
        img16 = Image.fromarray(grad)
        ref16 = Image.fromarray((grad // 257).astype(np.uint8), "L")
        self._kept("png-16-bit", "/ok/gray16.png", _encode(img16, "PNG"), ref16,
                   "16-bit grayscale PNG, black to white", "image/png")
        rgb = pic(360, 240)
        self._kept("cmyk-jpeg", "/ok/cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG", quality=95),
                   rgb.convert("CMYK").convert("RGB"), "CMYK JPEG (OpenCV alone would misread the colours)")
        pal = pic(300, 200).convert("P", palette=Image.ADAPTIVE, colors=16)
        ImageDraw.Draw(pal).rectangle([0, 0, 149, 199], fill=0)
        pal.info["transparency"] = 0
        self._kept("palette-transparency-png", "/ok/palette.png", _encode(pal, "PNG", transparency=0),
                   _over_white(pal), "palette PNG whose left half is the transparent index", "image/png")
        frames = [pic(240, 180) for _ in range(3)]
        self._kept("animated-gif", "/ok/anim.gif", _encode(frames[0].convert("P", palette=Image.ADAPTIVE), "GIF",
                                                           save_all=True, append_images=frames[1:], duration=100,
                                                           loop=0),
                   frames[0].convert("P", palette=Image.ADAPTIVE), "3-frame GIF: the first frame is stored",
                   "image/gif")
        frames = [pic(240, 180) for _ in range(3)]
        self._kept("animated-webp", "/ok/anim.webp", _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                                             duration=100, quality=95),
                   frames[0], "3-frame WebP: the first frame is stored", "image/webp")
        stored = pic(400, 240)
        exif = Image.Exif()
        exif[0x0112] = 6
        self._kept("exif-rotated-jpeg", "/ok/rotated.jpg", _encode(stored, "JPEG", quality=95, exif=exif.tobytes()),
                   stored.transpose(Image.Transpose.ROTATE_270),
                   "stored 400x240 with EXIF orientation 6: shown (and stored by us) 240x400")
        small = pic(64, 64)
        big = small.resize((8200, 8200), Image.Resampling.BILINEAR)
        self._kept("decodes-to-200mb", "/ok/huge.jpg", _encode(big, "JPEG", quality=80),
                   small.resize((512, 512), Image.Resampling.BILINEAR),
                   "8200x8200 JPEG: 202 MB of pixels once decoded", original_size=(8200, 8200))
        del big

        # -------- content codings: decoded as a browser does, the size cap applied to the decoded body too
        for name, coding, encode, note in (
            ("gzip-encoded-jpeg", "gzip", lambda b: gzip.compress(b, mtime=0), "Content-Encoding: gzip"),
            ("deflate-zlib-encoded-jpeg", "deflate", zlib.compress, "Content-Encoding: deflate, zlib-wrapped"),
            ("deflate-raw-encoded-jpeg", "deflate", deflate_raw, "Content-Encoding: deflate, raw (no zlib header)"),
        ):
            img = pic()
            plain = _encode(img, "JPEG", quality=92)
            self._kept(name, f"/enc/{name}.jpg", b"", img, f"{note}: stored as the plain JPEG",
                       responder=answer(200, encode(plain), headers={"Content-Encoding": coding}),
                       body_sha256=hashlib.sha256(plain).hexdigest())
        img = pic()
        plain = _encode(img, "JPEG", quality=92)
        self._kept("gzip-encoded-chunked-jpeg", "/enc/chunked.jpg", b"", img,
                   "Content-Encoding: gzip in Transfer-Encoding: chunked frames",
                   responder=chunked(gzip.compress(plain, mtime=0), {"Content-Encoding": "gzip"}),
                   body_sha256=hashlib.sha256(plain).hexdigest())
        bomb = gzip_bomb(2 << 30)
        self._route("/enc/bomb.jpg", answer(200, bomb, headers={"Content-Encoding": "gzip"}))
        self._case("gzip-bomb", "/enc/bomb.jpg", ["too_large"],
                   f"{len(bomb) >> 10} KiB of gzip (under max_bytes) that inflates to 2 GiB of zeros")
        del bomb
        self._route("/enc/brotli.jpg", answer(200, _encode(pic(), "JPEG"), headers={"Content-Encoding": "br"}))
        self._case("brotli-encoded", "/enc/brotli.jpg", ["download_error"],
                   "Content-Encoding: br, which is not asked for nor decoded")
        self._route("/enc/mislabelled.jpg", answer(200, _encode(pic(), "JPEG"), headers={"Content-Encoding": "gzip"}))
        self._case("gzip-label-on-plain-jpeg", "/enc/mislabelled.jpg", ["download_error"],
                   "Content-Encoding: gzip on a body that is a plain JPEG")

        # -------- sizes
        self._route("/size/1x1.png", answer(200, _encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), "image/png"))
        self._case("one-pixel", "/size/1x1.png", ["too_small"], "1x1 PNG")
        self._route("/size/wide.png", answer(200, _encode(pic(20000, 10), "PNG"), "image/png"))
        self._case("20000x10", "/size/wide.png", ["aspect_ratio", "too_small"], "20000x10 PNG")

        # -------- urls
        for name, path, note in (
            ("url-with-spaces", "/odd/a photo of a cat.jpg", "spaces in the path (sent as %20)"),
            ("url-with-unicode", "/odd/café-über-日本.jpg", "non-ASCII path (sent as UTF-8 percent escapes)"),
        ):
            img = pic()
            self._kept(name, path, _encode(img, "JPEG", quality=92), img, note)
        img = pic()
        self._kept("url-with-fragment", "/odd/fragment.jpg", _encode(img, "JPEG", quality=92), img,
                   "a #fragment (never sent to the server)", url="/odd/fragment.jpg#section-2")
        img = pic()
        self._kept("url-with-query", "/odd/query.jpg", _encode(img, "JPEG", quality=92), img,
                   "a query with spaces and non-ASCII", url="/odd/query.jpg?name=a b&t=é")
        for name, url, reason in (
            ("file-url", "file:///etc/passwd", "unsupported_scheme"),
            ("ftp-url", "ftp://127.0.0.1/pub/x.jpg", "unsupported_scheme"),
            ("data-url", "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                         "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==", "unsupported_scheme"),
            ("javascript-url", "javascript:alert(1)", "unsupported_scheme"),
            ("private-ip", "http://10.0.0.1/x.jpg", "blocked_address"),
            ("cloud-metadata-ip", "http://169.254.169.254/latest/meta-data/", "blocked_address"),
            ("aws-ipv6-metadata-ip", "http://[fd00:ec2::254]/latest/meta-data/", "blocked_address"),
            ("ipv4-mapped-metadata-ip", "http://[::ffff:169.254.169.254]/latest/meta-data/", "blocked_address"),
            ("decimal-metadata-ip", "http://2852039166/latest/meta-data/", "blocked_address"),
            ("ipv6-loopback", f"http://[::1]:{self.port}/x.jpg", "blocked_address"),
            ("other-loopback", f"http://127.0.0.2:{self.port}/x.jpg", "blocked_address"),
            ("unspecified-address", f"http://0.0.0.0:{self.port}/x.jpg", "blocked_address"),
            ("decimal-ip-loopback", f"http://2130706434:{self.port}/x.jpg", "blocked_address"),
            ("url-without-host", "http:///x.jpg", "invalid_url"),
            ("url-bad-ipv6", "http://[::1/x.jpg", "invalid_url"),
            ("url-bad-port", "http://127.0.0.1:99999/x.jpg", "invalid_url"),
        ):
            self._case(name, url, [reason], f"{url[:40]}")
        self._case("empty-url", "", ["invalid_input"], "empty url cell")

        # -------- captions (each with a distinct, valid image)
        for name, caption, reason, jsonl in (
            ("caption-empty", "", "caption_too_short", False),
            ("caption-100kb", "word " * 20_480, "caption_too_long", False),
            ("caption-invalid-utf8", b"a caf\xe9 in Lisbon \xff\xfe", "invalid_caption", False),
            ("caption-control-chars", "a\x01picture\x07of\x1b[31m a \x7fbird\x08\x08", "invalid_caption", False),
            ("caption-json-nul-surrogate", "a \x00 picture \ud800 of a bird", "invalid_caption", True),
        ):
            path = f"/cap/{name}.jpg"
            self._route(path, answer(200, _encode(pic(), "JPEG")))
            self._case(name, path, [reason], f"caption: {name[8:]}", caption=caption, jsonl=jsonl)

        # -------- duplicates
        first = next(c for c in self.cases if c.name == "url-with-spaces")
        self._case("duplicate-url", first.url, ["duplicate_url"], "the same url listed twice",
                   caption="another caption for a repeated url")
        self._route("/dup/copy.jpg", self.routes[quote(first.url, safe="/%:@!$&'()*+,;=-._~")])
        self._case("duplicate-image", "/dup/copy.jpg", ["duplicate"], "the bytes of url-with-spaces, another url")

    # -------------------------------------------------------------- inputs
    def url_of(self, case: Case) -> str:
        return self.base + case.url if case.url.startswith("/") else case.url

    def write_inputs(self, folder: Path) -> list[Path]:
        """The CSV (most cases, raw bytes where a caption is not UTF-8) and the JSONL input files."""
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, jsonl_path = folder / "corpus.csv", folder / "corpus.jsonl"
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["url", "caption", "case"])
        raw_lines = [buf.getvalue().encode()]
        for case in self.cases:
            if case.jsonl:
                continue
            buf = io.StringIO()
            placeholder = "\x00RAW\x00" if isinstance(case.caption, bytes) else case.caption
            csv.writer(buf, lineterminator="\n").writerow([self.url_of(case), placeholder, case.name])
            line = buf.getvalue().encode("utf-8")
            if isinstance(case.caption, bytes):
                line = line.replace(b"\x00RAW\x00", case.caption)
            raw_lines.append(line)
        csv_path.write_bytes(b"".join(raw_lines))
        with open(jsonl_path, "w", encoding="utf-8") as fh:
            for case in self.cases:
                if case.jsonl:
                    fh.write(json.dumps({"url": self.url_of(case), "caption": case.caption, "case": case.name}) + "\n")
        return [csv_path, jsonl_path]


# ---------------------------------------------------------------- launcher
def fake_getaddrinfo(hosts: dict[str, list[str]], real: Callable) -> Callable:
    """A ``socket.getaddrinfo`` that answers ``hosts`` (name -> IP addresses) itself, refuses other ``*.test`` and
    ``*.invalid`` names, and asks ``real`` about everything else."""

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's signature
        name = host.decode() if isinstance(host, bytes) else host
        if name in hosts:
            out = []
            for ip in hosts[name]:
                if ":" in ip:
                    out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, int(port or 0), 0, 0)))
                else:
                    out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(port or 0))))
            return out
        if name.endswith((".test", ".invalid")):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, family, type, proto, flags)

    return getaddrinfo


def _is_loopback(host: object) -> bool:
    if not isinstance(host, str):
        return False
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or (mapped is not None and mapped.is_loopback)


def loopback_only(real_connect: Callable, attempts: list) -> Callable:
    """A ``socket.socket.connect`` that refuses and records (in ``attempts``) every destination but loopback and
    Unix sockets, so a test that hands out other addresses sends nothing there, whatever the code under test
    does."""

    def connect(sock, address):
        if isinstance(address, tuple) and not _is_loopback(address[0]):
            attempts.append(list(address[:2]))
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"test fence: no connection beyond loopback "
                                                             f"(to {address[0]})")
        return real_connect(sock, address)

    return connect


def _patch_dns(hosts: dict[str, list[str]], attempts: list) -> None:
    socket.getaddrinfo = fake_getaddrinfo(hosts, socket.getaddrinfo)
    socket.socket.connect = loopback_only(socket.socket.connect, attempts)


def main(argv: list[str]) -> int:
    import os

    i = argv.index("--")
    opts, cli_args = argv[:i], argv[i + 1:]
    hosts = json.loads(opts[opts.index("--hosts") + 1])
    rss_file = opts[opts.index("--rss-file") + 1]
    fence_file = opts[opts.index("--fence-file") + 1] if "--fence-file" in opts else None
    attempts: list = []
    _patch_dns(hosts, attempts)
    from unicurate import cli

    code = cli.main(cli_args)
    if fence_file:
        Path(fence_file).write_text(json.dumps(attempts))
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    Path(rss_file).write_text(str(peak * 1024))
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as the unicurate entry point does (no native teardown)


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
