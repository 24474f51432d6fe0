"""One weight resolver for every model: ``hf://``, ``https://``, ``gs://`` and local paths.

``resolve(uri, model=...)`` returns a local file path. Lookup order:

1. a local path (or ``file://``) is used as it is;
2. the local cache (``models.cache_dir``, default ``~/.cache/unicurate/models``);
3. the mirror (``models.mirror``: a folder, local or ``gs://``, filled by
   ``unicurate models fetch --to``), copied into the cache;
4. the URI itself (Hugging Face Hub, HTTPS, or GCS through Beam's filesystems),
   unless offline (``HF_HUB_OFFLINE=1``, ``UNICURATE_OFFLINE=1`` or
   ``models.offline``).

The cache layout is readable and the same in the mirror:
``hf/ORG/REPO[@REV]/FILE``, ``https/HOST/PATH``, ``gs/BUCKET/PATH``. Files are
written to a temporary name and renamed, and checked against the expected
sha256 when one is known (a ``.sha256`` sidecar avoids re-hashing big files).

When weights cannot be had, :class:`ModelUnavailable` says which model, which
URI, what was tried and how to stage the weights.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SCHEMES = ("hf", "https", "http", "gs")
CHUNK = 1 << 20


class ModelUnavailable(RuntimeError):
    """Weights cannot be found or fetched. The message is for the user."""


class ChecksumMismatch(ModelUnavailable):
    """A weights file does not have the expected sha256."""


def env_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("UNICURATE_OFFLINE", "HF_HUB_OFFLINE"))


def default_cache_dir() -> str:
    return os.environ.get("UNICURATE_MODEL_CACHE") or str(Path("~/.cache/unicurate/models").expanduser())


@dataclass(frozen=True)
class Parsed:
    scheme: str  # hf, https, http, gs, or "" for a local path
    relpath: str  # path inside the cache / mirror ("" for local paths)
    local: Optional[str] = None  # local paths only
    repo_id: Optional[str] = None  # hf only
    revision: Optional[str] = None  # hf only
    filename: Optional[str] = None  # hf only


def parse_uri(uri: str) -> Parsed:
    """Split a weights URI; raises ValueError with the accepted forms when it is malformed."""
    if not uri or not isinstance(uri, str):
        raise ValueError("empty weights URI")
    if uri.startswith("file://"):
        return Parsed("", "", local=urllib.parse.unquote(uri[len("file://"):]))
    if "://" not in uri:
        return Parsed("", "", local=str(Path(uri).expanduser()))
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported weights URI scheme {scheme!r} in {uri!r}; "
                         "use hf://org/repo/file, https://..., gs://bucket/path or a local path")
    if scheme == "hf":
        parts = rest.split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"malformed {uri!r}: expected hf://ORG/REPO[@REVISION]/PATH/IN/REPO")
        if any(part in (".", "..") or "\\" in part or "\0" in part for part in parts):
            # the parts become the cache / mirror path: no segment may climb out of it
            raise ValueError(f"malformed {uri!r}: '.', '..', backslashes and NUL are not allowed in its path")
        repo, revision = parts[1], None
        if "@" in repo:
            repo, revision = repo.split("@", 1)
        rel = "/".join(["hf", parts[0], parts[1], *parts[2:]])
        return Parsed("hf", rel, repo_id=f"{parts[0]}/{repo}", revision=revision, filename="/".join(parts[2:]))
    u = urllib.parse.urlsplit(uri)
    if not u.netloc or not u.path.strip("/"):
        raise ValueError(f"malformed weights URI {uri!r}: needs a host/bucket and a path")
    path = urllib.parse.unquote(u.path).lstrip("/")
    if u.netloc in (".", "..") or any(c in u.netloc + path for c in ("\\", "\0")):
        # the host and path become the cache / mirror path ('.' and '..' path segments are dropped below)
        raise ValueError(f"malformed weights URI {uri!r}: the host/bucket may not be '.' or '..', and neither it "
                         "nor the path may hold backslashes or NUL")
    if scheme in ("http", "https") and u.query:
        path += "_" + hashlib.sha256(u.query.encode()).hexdigest()[:12]
    segs = [s for s in path.split("/") if s not in ("", ".", "..")]
    return Parsed(scheme, "/".join([("https" if scheme == "http" else scheme), u.netloc, *segs]))


def cache_path(uri: str, cache_dir: Optional[str] = None) -> Optional[Path]:
    """Where ``uri`` lives in the local cache (None for local paths)."""
    p = parse_uri(uri)
    if not p.scheme:
        return None
    return Path(cache_dir or default_cache_dir()) / p.relpath


def sha256_file(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


_SHA_MEMO: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, per process


def file_sha256(path: str | Path, remember: bool = True) -> str:
    """sha256 of a local file, memoised per process and read from a ``.sha256`` sidecar when one is current.

    ``remember`` writes the sidecar (keyed by size and mtime). The resolver remembers only for files in
    its own cache; files inside installed packages or a user's folder are hashed but never written beside.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    stamp = f"{st.st_size}:{st.st_mtime_ns}"
    side = path.with_name(path.name + ".sha256")
    digest = None
    try:
        stored_stamp, stored = side.read_text().split()
        if stored_stamp == stamp and len(stored) == 64:
            digest = stored
    except (OSError, ValueError):
        pass
    if digest is None:
        digest = sha256_file(path)
        if remember:
            try:
                tmp = side.with_name(f".{side.name}.{uuid.uuid4().hex}")
                tmp.write_text(f"{stamp} {digest}\n")
                tmp.replace(side)
            except OSError:  # read-only cache: fine, just slower next time
                pass
    _SHA_MEMO[key] = digest
    return digest


def _check_sha(path: Path, expected: Optional[str], model: str, uri: str, in_cache: bool) -> None:
    """Verify ``expected``; files in the cache always get their sha256 remembered for the loaders."""
    if not expected and not in_cache:
        return
    got = file_sha256(path, remember=in_cache)
    if expected and got.lower() != expected.lower():
        raise ChecksumMismatch(
            f"model '{model}': {path} (from {uri}) has sha256 {got}, expected {expected}. "
            f"The file is corrupt or another version; delete it and stage it again with "
            f"`unicurate models fetch`, or fix the sha256 in the recipe's models.overrides."
        )


def staging_hint(profile: Optional[str] = None) -> str:
    prof = f" --profile {profile}" if profile else ""
    return (f"stage the weights on a machine with internet access with `unicurate models fetch{prof} --to DIR`, "
            f"then copy DIR here (or to a gs:// bucket) and set models.mirror: DIR in the recipe "
            f"(or models.cache_dir / $UNICURATE_MODEL_CACHE to DIR)")


def _unavailable(model: str, uri: str, why: str, profile: Optional[str]) -> ModelUnavailable:
    return ModelUnavailable(f"model '{model}': weights {uri} are not available: {why}. To fix: {staging_hint(profile)}.")


def _copy_into(src_open, dest: Path) -> None:
    """Copy a readable binary stream into ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex}-{dest.name}")
    try:
        with src_open() as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        tmp.replace(dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _beam_open(path: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _beam_exists(path: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def mirror_path(mirror: str, relpath: str) -> str:
    """``relpath`` (cache layout) under a mirror folder, local or remote, joined by Beam's filesystems."""
    from apache_beam.io.filesystems import FileSystems

    root = mirror if "://" in mirror else str(Path(mirror).expanduser())
    return FileSystems.join(root, *relpath.split("/"))


def _reachable(url: str, timeout: float) -> None:
    """Fail fast (one DNS lookup + TCP connect) instead of a client's minutes of retries when offline."""
    import socket

    u = urllib.parse.urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach {u.hostname}:{port} ({exc})") from None


def _download(p: Parsed, uri: str, dest: Path, timeout: float) -> None:
    if p.scheme == "hf":
        _reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co", min(timeout, 10.0))
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
            raise RuntimeError("huggingface_hub is not installed") from exc
        tmpdir = dest.parent / f".hf-{uuid.uuid4().hex}"
        try:
            got = hf_hub_download(p.repo_id, p.filename, revision=p.revision, local_dir=str(tmpdir))
            dest.parent.mkdir(parents=True, exist_ok=True)
            Path(got).replace(dest)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    elif p.scheme in ("http", "https"):
        req = urllib.request.Request(uri, headers={"User-Agent": "unicurate-models"})
        _copy_into(lambda: urllib.request.urlopen(req, timeout=timeout), dest)  # noqa: S310 - https/http only
    elif p.scheme == "gs":
        _copy_into(lambda: _beam_open(uri), dest)
    else:  # pragma: no cover
        raise ValueError(uri)


def resolve(
    uri: str,
    *,
    model: str,
    sha256: Optional[str] = None,
    cache_dir: Optional[str] = None,
    mirror: Optional[str] = None,
    offline: Optional[bool] = None,
    profile: Optional[str] = None,
    timeout: float = 60.0,
) -> Path:
    """A local path holding the weights of ``model`` (see the module docstring for the lookup order)."""
    try:
        p = parse_uri(uri)
    except ValueError as exc:
        raise ModelUnavailable(f"model '{model}': {exc}") from None
    if not p.scheme:
        path = Path(p.local)
        if not path.exists():
            raise _unavailable(model, uri, f"the local path {path} does not exist", profile)
        if path.is_file():
            _check_sha(path, sha256, model, uri, in_cache=False)
        return path

    dest = Path(cache_dir or default_cache_dir()) / p.relpath
    if dest.is_file():
        _check_sha(dest, sha256, model, uri, in_cache=True)
        return dest
    tried = [f"cache {dest}"]
    if mirror:
        src = mirror_path(mirror, p.relpath)
        tried.append(f"mirror {src}")
        try:
            exists = _beam_exists(src)
        except Exception as exc:  # noqa: BLE001 - e.g. gs:// without apache-beam[gcp]
            raise _unavailable(model, uri, f"cannot read the mirror {src}: {exc}", profile) from None
        if exists:
            _copy_into(lambda: _beam_open(src), dest)
            _check_sha(dest, sha256, model, uri, in_cache=True)
            return dest
    if offline if offline is not None else env_offline():
        raise _unavailable(model, uri, f"offline mode is on and it is not in the {' or the '.join(tried)}", profile)
    try:
        _download(p, uri, dest, timeout)
    except Exception as exc:  # noqa: BLE001 - any network/auth/filesystem failure ends the same way
        raise _unavailable(model, uri, f"download failed ({type(exc).__name__}: {exc}); tried {', '.join(tried)}",
                           profile) from None
    _check_sha(dest, sha256, model, uri, in_cache=True)
    return dest


def is_cached(uri: str, cache_dir: Optional[str] = None) -> bool:
    p = parse_uri(uri)
    if not p.scheme:
        return Path(p.local).exists()
    return (Path(cache_dir or default_cache_dir()) / p.relpath).is_file()


def stage(uri: str, dest_root: str, *, model: str, sha256: Optional[str] = None,
          cache_dir: Optional[str] = None, offline: Optional[bool] = None) -> str:
    """Resolve ``uri`` and copy the file to ``dest_root/<cache layout>`` (local or gs://). Returns the path."""
    local = resolve(uri, model=model, sha256=sha256, cache_dir=cache_dir, offline=offline)
    p = parse_uri(uri)
    rel = p.relpath or f"local/{Path(p.local).name}"
    target = mirror_path(dest_root, rel)
    if "://" in target:
        from apache_beam.io.filesystems import FileSystems

        with open(local, "rb") as src, FileSystems.create(target) as out:
            shutil.copyfileobj(src, out, CHUNK)
    else:
        tpath = Path(target)
        if tpath.resolve() != Path(local).resolve():
            _copy_into(lambda: open(local, "rb"), tpath)
    return target
