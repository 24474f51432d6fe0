"""Download, decode and resize: plain Python, wrapped by the Beam curate pipeline.

Downloading is img2dataset's ``downloader.download_image`` (under the
:mod:`netguard` policy, which also undoes a gzip/deflate ``Content-Encoding``
while streaming, so ``download_image`` reads, and ``download_bytes`` and
``sha256`` describe, the decoded body); resizing and re-encoding is
img2dataset's ``resizer.Resizer``. Around them this module adds what a
curated dataset needs: a cheap header probe with Pillow (format, size,
decompression-bomb limit, EXIF orientation, truncated-JPEG detection),
normalisation of inputs OpenCV would misread (EXIF-rotated, CMYK, 16-bit,
animated, exotic formats), the image sha256 (of the downloaded bytes, as
img2dataset computes it) and a perceptual hash of the stored image.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset imports albumentations

import numpy as np  # noqa: E402
from PIL import Image, ImageFile, ImageOps  # noqa: E402

from unicurate.config import DownloadConfig, ResizeConfig  # noqa: E402
from unicurate.download import netguard  # noqa: E402
from unicurate.schema import Reason  # noqa: E402

ImageFile.LOAD_TRUNCATED_IMAGES = False
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we enforce our own limit

# Reasons worth retrying: the next attempt may succeed.
_TRANSIENT = {Reason.TIMEOUT, Reason.CONNECTION_ERROR, Reason.DOWNLOAD_ERROR}
_CV2_FORMATS = {"JPEG", "PNG", "WEBP"}
_CV2_MODES = {"RGB", "L", "RGBA", "P"}
_ENCODER_MAX_SIDE = {"jpg": 65_500, "webp": 16_383}  # libjpeg / libwebp limits; PNG's is 2**31
_FORMAT_NAMES = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}

# img2dataset's Resizer redirects the process-wide stdout/stderr file descriptors
# while it decodes (SuppressStdoutStderr). Two threads doing that at once can
# leave the process writing to /dev/null for good, so calls are serialised per
# process, as img2dataset itself resizes one image at a time per process.
_RESIZE_LOCK = threading.Lock()


@dataclass
class Fetched:
    """Result of downloading and decoding one row."""

    reasons: list[str]
    error: Optional[str] = None
    image: Optional[bytes] = None
    image_format: Optional[str] = None
    original_format: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    original_width: Optional[int] = None
    original_height: Optional[int] = None
    download_bytes: Optional[int] = None
    sha256: Optional[str] = None
    phash: Optional[str] = None
    seconds: float = 0.0


_I2D_PARTS: dict = {}
_I2D_LOCK = threading.Lock()


def img2dataset_part(name: str):
    """``img2dataset.<name>`` (``resizer``, ``downloader``), without running the package's ``__init__``.

    ``img2dataset/__init__`` imports the whole CLI (its writers import webdataset, which imports torch):
    about 1.3 s and 300 MB in every worker process that only downloads and resizes. When the package is
    not imported yet, the submodule is loaded under a bare package entry that is removed again, so a
    later ``import img2dataset`` still runs the real ``__init__`` (and reuses this submodule).
    """
    part = _I2D_PARTS.get(name)
    if part is not None:
        return part
    import importlib.util
    import sys

    full = f"img2dataset.{name}"
    with _I2D_LOCK:  # download threads ask at once: one imports, the others wait for a complete module
        if name in _I2D_PARTS:
            return _I2D_PARTS[name]
        spec = None if "img2dataset" in sys.modules else importlib.util.find_spec("img2dataset")
        if spec is None or not spec.submodule_search_locations:
            part = importlib.import_module(full)  # already imported, or the usual ImportError
        else:
            bare = importlib.util.module_from_spec(
                importlib.machinery.ModuleSpec("img2dataset", None, is_package=True))
            bare.__path__ = list(spec.submodule_search_locations)
            sys.modules["img2dataset"] = bare
            try:
                part = importlib.import_module(full)
            finally:
                if sys.modules.get("img2dataset") is bare:
                    del sys.modules["img2dataset"]
        _I2D_PARTS[name] = part
        return part


def make_resizer(cfg: ResizeConfig):
    Resizer = img2dataset_part("resizer").Resizer

    return Resizer(
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        upscale_interpolation=cfg.upscale_interpolation,
        downscale_interpolation=cfg.downscale_interpolation,
        encode_quality=cfg.encode_quality,
        encode_format=cfg.encode_format,
        skip_reencode=cfg.skip_reencode,
        # Size and aspect limits are unicurate rule filters (recorded, re-decidable
        # later), applied before the resize; the Resizer only decodes and resizes.
        min_image_size=0,
        max_aspect_ratio=float("inf"),
    )


def download(url: str, cfg: DownloadConfig, policy: netguard.Policy) -> tuple[Optional[bytes], Optional[str]]:
    """Download with img2dataset's ``download_image``. Returns (bytes, None) or (None, error)."""
    download_image = img2dataset_part("downloader").download_image

    netguard.check_url(url, cfg.allow_private_networks, policy.allowed)
    wire_url = netguard.request_url(url)
    token = cfg.user_agent_token.strip().lower() if cfg.user_agent_token else None
    directives = {d.strip().lower() for d in cfg.disallowed_header_directives} or None
    err: Optional[str] = None
    for _ in range(cfg.retries + 1):
        with netguard.using(policy):
            _, stream, err = download_image((None, wire_url), cfg.timeout, token, directives)
        if stream is not None:
            return stream.getvalue(), None
        if netguard.classify_error(err or "") not in _TRANSIENT:
            break
    return None, err or "download failed"


def phash_hex(encoded: bytes) -> Optional[str]:
    """64-bit perceptual hash (imagehash.phash) of an encoded image, as 16 hex digits."""
    import imagehash

    with Image.open(io.BytesIO(encoded)) as img:
        img.draft("L", (64, 64))  # JPEG: decode at reduced DCT scale; phash works on 32x32
        return str(imagehash.phash(img.convert("L")))


class Decoder:
    """Probe, normalise, resize and hash one downloaded image."""

    def __init__(self, cfg: ResizeConfig, compute_phash: bool = True):
        self.cfg = cfg
        self.resizer = make_resizer(cfg)
        self.compute_phash = compute_phash
        if compute_phash:  # imported now, not by the first decode while the downloads run (imagehash.phash
            for module in ("imagehash", "scipy.fftpack"):  # imports scipy.fftpack on its first call: a stall)
                importlib.import_module(module)

        if cfg.max_image_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            # PIL raises its own bomb error at 2x its limit; ours is authoritative.
            Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

    def probe(self, data: bytes, out: Fetched):
        """Open the header and validate. Returns the PIL image (lazy) or None with reasons set."""
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            out.reasons.append(Reason.DECOMPRESSION_BOMB.value)
            out.error = f"{exc} (resize.max_image_pixels = {self.cfg.max_image_pixels})"
            return None
        except Image.UnidentifiedImageError:
            out.reasons.append(Reason.NOT_AN_IMAGE.value)
            out.error = f"not a recognised image format (the body starts with {data[:24]!r})"
            return None
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on corrupt headers
            out.reasons.append(Reason.DECODE_ERROR.value)
            out.error = f"corrupt image header ({type(exc).__name__}: {exc})"
            return None
        out.original_format = _FORMAT_NAMES.get(img.format or "", (img.format or "unknown").lower())
        w, h = img.size
        out.original_width, out.original_height = w, h
        if w * h > self.cfg.max_image_pixels:
            out.reasons.append(Reason.DECOMPRESSION_BOMB.value)
            out.error = f"{w}x{h} = {w * h} pixels exceeds resize.max_image_pixels {self.cfg.max_image_pixels}"
            return None
        if w < 1 or h < 1:
            out.reasons.append(Reason.DECODE_ERROR.value)
            out.error = f"invalid dimensions {w}x{h}"
            return None
        try:
            orientation = img.getexif().get(0x0112, 1) if img.format in ("JPEG", "WEBP", "PNG", "TIFF") else 1
        except Exception:  # noqa: BLE001 - broken EXIF is ignored, as browsers do
            orientation = 1
        if orientation in (5, 6, 7, 8):
            out.original_width, out.original_height = h, w
        img.info["unicurate_orientation"] = orientation
        if img.format == "JPEG":
            # Read the whole entropy-coded stream at 1/8 scale: truncated or corrupt
            # files fail here cheaply (OpenCV would silently grey-fill them).
            try:
                img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
                img.load()
            except Exception as exc:  # noqa: BLE001
                out.reasons.append(Reason.DECODE_ERROR.value)
                out.error = f"corrupt or truncated JPEG: {exc}"
                return None
        return img

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The size img2dataset's Resizer gives a ``width`` x ``height`` image under this config."""
        cfg, size = self.cfg, self.cfg.image_size
        mode = cfg.resize_mode
        if mode == "no":
            return width, height
        side = min(width, height) if mode in ("keep_ratio", "center_crop") else max(width, height)
        if cfg.resize_only_if_bigger and side <= size:
            return width, height
        if mode in ("center_crop", "border"):
            return size, size
        scale = size / side
        return max(1, round(width * scale)), max(1, round(height * scale))

    def _output_problem(self, out: Fetched) -> Optional[tuple[Reason, str]]:
        """Why the resized image cannot be made (too many pixels, past the encoder's side limit), or None."""
        w, h = self.output_size(out.original_width, out.original_height)
        if w * h > self.cfg.max_image_pixels:
            return Reason.DECOMPRESSION_BOMB, (
                f"resizing {out.original_width}x{out.original_height} ({self.cfg.resize_mode}, image_size "
                f"{self.cfg.image_size}) would give {w}x{h} = {w * h} pixels, over resize.max_image_pixels "
                f"{self.cfg.max_image_pixels}")
        limit = _ENCODER_MAX_SIDE.get(self.cfg.encode_format)
        if limit is not None and max(w, h) > limit:
            return Reason.DECODE_ERROR, (
                f"resizing {out.original_width}x{out.original_height} ({self.cfg.resize_mode}, image_size "
                f"{self.cfg.image_size}) would give {w}x{h}, past the {self.cfg.encode_format} limit of {limit} px "
                f"per side")
        return None

    def resize(self, data: bytes, img, out: Fetched) -> None:
        """Normalise if needed, then resize/encode with img2dataset's Resizer."""
        problem = self._output_problem(out)
        if problem is not None:
            out.reasons.append(problem[0].value)
            out.error = problem[1]
            return
        orientation = img.info.get("unicurate_orientation", 1)
        if img.format not in _CV2_FORMATS or img.mode not in _CV2_MODES or orientation != 1:
            try:
                data = self._normalise(data)
            except Exception as exc:  # noqa: BLE001
                out.reasons.append(Reason.DECODE_ERROR.value)
                out.error = f"cannot decode {out.original_format} image: {exc}"
                return
        with _RESIZE_LOCK:
            encoded, width, height, _, _, err = self.resizer(io.BytesIO(data))
        if err is not None or encoded is None:
            out.reasons.append(Reason.DECODE_ERROR.value)
            out.error = f"cannot decode the {out.original_format} image: {err} (truncated or corrupt data)"
            return
        out.image = encoded
        out.image_format = self.cfg.encode_format
        out.width, out.height = width, height
        if self.compute_phash:
            try:
                out.phash = phash_hex(encoded)
            except Exception:  # noqa: BLE001 - phash is best effort metadata
                out.phash = None

    @staticmethod
    def _normalise(data: bytes) -> bytes:
        """Decode with Pillow (EXIF orientation, first frame, any mode) and re-encode losslessly."""
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.uint32)
                scale = 257 if arr.max(initial=0) > 255 else 1
                img = Image.fromarray((arr // scale).clip(0, 255).astype(np.uint8), "L")
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float32)
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
            elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
            elif img.mode != "L":
                img = img.convert("RGB")
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            return buf.getvalue()


class Fetcher:
    """Downloads rows with a thread pool and decodes them in input order.

    ``prefilter(row, fetched)`` is called after the header probe with the
    original dimensions known; it returns reject reasons. Rows rejected there
    are not resized unless ``keep_rejected_images`` (the resize is the costly part).
    """

    def __init__(
        self,
        download_cfg: DownloadConfig,
        resize_cfg: ResizeConfig,
        prefilter: Optional[Callable[[dict, Fetched], list[str]]] = None,
        keep_rejected_images: bool = False,
        compute_phash: bool = True,
    ):
        self.download_cfg = download_cfg
        self.decoder = Decoder(resize_cfg, compute_phash=compute_phash)
        self.prefilter = prefilter
        self.keep_rejected_images = keep_rejected_images
        self.policy = netguard.Policy(
            allow_private_networks=download_cfg.allow_private_networks,
            max_bytes=download_cfg.max_bytes,
            max_seconds=download_cfg.max_seconds,
            allowed_networks=tuple(download_cfg.allowed_networks),
        )
        img2dataset_part("downloader")  # loaded here, once, not by the first download threads
        self._pool = ThreadPoolExecutor(max_workers=download_cfg.thread_count, thread_name_prefix="download")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _download(self, row: dict) -> tuple[dict, Fetched, Optional[bytes]]:
        start = time.monotonic()
        out = Fetched(reasons=[])
        try:
            data, err = download(row["url"], self.download_cfg, self.policy)
        except netguard.GuardError as exc:
            data, err = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - never let one URL kill the bundle
            data, err = None, f"{type(exc).__name__}: {exc}"
        if data is None:
            reason = netguard.classify_error(err or "")
            out.reasons.append(reason.value)
            out.error = netguard.strip_tag(err or "download failed")
            if reason is Reason.TIMEOUT and "max_seconds" not in out.error:
                out.error += f" (no data for download.timeout = {self.download_cfg.timeout:g} s)"
        elif not data:
            out.reasons.append(Reason.EMPTY_RESPONSE.value)
            out.error = "the server answered with an empty body"
            data = None
        else:
            out.download_bytes = len(data)
        out.seconds = time.monotonic() - start
        return row, out, data

    def _decode(self, row: dict, out: Fetched, data: bytes) -> None:
        out.sha256 = hashlib.sha256(data).hexdigest()
        img = self.decoder.probe(data, out)
        if img is None:
            return
        if self.prefilter is not None:
            out.reasons.extend(self.prefilter(row, out))
        if out.reasons and not self.keep_rejected_images:
            return
        self.decoder.resize(data, img, out)

    def _decode_safely(self, row: dict, out: Fetched, data: Optional[bytes]) -> Fetched:
        if data is not None:
            try:
                self._decode(row, out, data)
            except Exception as exc:  # noqa: BLE001 - last line of defence
                out.reasons.append(Reason.DECODE_ERROR.value)
                out.error = f"{type(exc).__name__}: {exc}"
        return out

    def fetch(self, rows: Iterable[dict], window: Optional[int] = None,
              wanted: Optional[Callable[[dict], bool]] = None) -> Iterator[tuple[dict, Optional[Fetched]]]:
        """Yield (row, Fetched) for every row, in the order of ``rows``, while up to ``window`` rows (default: 4 per
        download thread) are downloading or waiting ahead of the one being yielded: the downloads run
        continuously on the pool, never batch by batch, and memory holds at most ``window`` responses.

        Rows that already carry their encoded image (``image_bytes``, from ``input.image_col``) are not
        downloaded. Decoding happens on the calling thread, as each row is yielded. Rows that ``wanted`` says
        no to (an invalid input row, a repeated url) are yielded in their place with None.
        """
        from collections import deque

        window = window or 4 * self.download_cfg.thread_count
        pending: deque = deque()  # (row, future or image bytes) in input order

        def next_done() -> tuple[dict, Fetched]:
            row, job = pending.popleft()
            if job is None:
                return row, None
            if isinstance(job, bytes):
                return row, self._decode_safely(row, Fetched(reasons=[], download_bytes=len(job)), job)
            _, out, data = job.result()
            return row, self._decode_safely(row, out, data)

        for row in rows:
            data = row.get("image_bytes")
            job = None if wanted is not None and not wanted(row) else \
                data if data else self._pool.submit(self._download, row)
            pending.append((row, job))
            while pending and (len(pending) > window or _ready(pending[0][1])):
                yield next_done()
        while pending:
            yield next_done()


def _ready(job) -> bool:
    return job is None or isinstance(job, bytes) or job.done()
