"""Safe HTTP fetching underneath img2dataset's ``downloader.download_image``.

img2dataset downloads with ``urllib.request.urlopen``. We keep calling its
function unchanged and install (once per process) an opener that dispatches to
a per-thread *policy*; outside a policy the standard opener is used, so other
code in the process is unaffected. A policy adds what a crawler of untrusted
URLs needs:

* only ``http``/``https``, on the first request and after every redirect;
* an SSRF guard: the host name is resolved, every address is checked
  (loopback, private, link-local, multicast, reserved, unspecified are refused
  unless ``allow_private_networks``, or the address is in one of the
  ``allowed_networks``) and the socket connects to the checked address itself,
  so DNS rebinding between check and connect cannot slip past; redirects are
  checked the same way, since each hop opens a new guarded connection. The
  ranges of cloud instance-metadata services (:data:`METADATA_NETWORKS`) stay
  refused even with ``allow_private_networks``: only an ``allowed_networks``
  entry inside such a range opens it;
* a response-size cap enforced from ``Content-Length`` and while streaming, and
  a body shorter than its ``Content-Length`` is an error, not a truncated image;
* ``Content-Encoding: gzip`` / ``deflate`` (zlib-wrapped or raw, as browsers
  accept) decoded while streaming, with the size cap applied to the decoded
  body too, so a gzip bomb stops at ``max_bytes`` instead of inflating in
  memory; other codings are a clear error, and only ``gzip, deflate`` are asked
  for in ``Accept-Encoding``;
* an overall deadline, so a server that drips one byte at a time cannot hold a
  worker for longer than ``max_seconds`` (the socket ``timeout`` only bounds a
  single read).

Errors raised here carry a ``[reason_code]`` prefix that survives
``download_image``'s ``str(err)`` so :func:`classify_error` can map them.

Environment proxies are not used: every connection goes straight to the host
whose address was checked.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from unicurate.schema import Reason

ALLOWED_SCHEMES = ("http", "https")
_ALLOW_HINT = "download.allowed_networks lists networks to allow"
_CHUNK = 64 * 1024


class GuardError(OSError):
    """A download refused or stopped by the policy; ``str()`` starts with ``[reason]``."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(f"[{reason.value}] {message}")
        self.reason = reason


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Parsed ``download.allowed_networks``."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


# Where cloud instance-metadata services answer (credentials, user data): refused even with
# allow_private_networks, which tests, the demo and intranet mirrors turn on. 169.254.169.254 (AWS, GCP, Azure,
# Oracle, OpenStack, DigitalOcean) and all of IPv4 link-local; AWS's IPv6 endpoint; IPv6 link-local, which no
# image server is addressed by (it needs a zone id) and where OpenStack's IPv6 metadata service lives
# (fe80::a9fe:a9fe); Alibaba Cloud's 100.100.100.200.
METADATA_NETWORKS: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10", "100.100.100.200/32",
))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are an IPv4 address


def _metadata_network(addr: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """(the form of ``addr`` that is in a metadata range, that range), or None. IPv4-mapped and NAT64 IPv6
    addresses count as the IPv4 address they carry."""
    forms = [addr]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            forms.append(addr.ipv4_mapped)
        elif addr in _NAT64:
            forms.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    for form in forms:
        for net in METADATA_NETWORKS:
            if form.version == net.version and form in net:
                return form, net
    return None


def _refusal(ip: str, allowed: Sequence[Network], allow_private_networks: bool) -> Optional[tuple[str, str]]:
    """(what the address is, how to allow it) when the SSRF guard refuses ``ip``, or None."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    found = _metadata_network(addr)
    if found is not None:
        form, metadata = found
        if any(net.version == form.version and net.subnet_of(metadata) and form in net for net in allowed):
            return None
        kind = "link-local" if form.is_link_local else "metadata-service"
        shown = f"{form} (as {addr})" if form != addr else str(addr)
        return (f"{kind} address {shown}, in {metadata} where cloud metadata services answer",
                f"even with download.allow_private_networks; only a download.allowed_networks entry inside "
                f"{metadata} allows it")
    if allow_private_networks:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allowed):
        return None
    for attr, label in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(addr, attr):
            return f"{label} address {addr}", _ALLOW_HINT
    if not addr.is_global:
        return f"non-global address {addr}", _ALLOW_HINT
    return None


def address_problem(ip: str, allowed: Sequence[Network] = (), allow_private_networks: bool = False) -> Optional[str]:
    """Why connecting to ``ip`` is refused by the SSRF guard, or None when it may be connected to.

    Public addresses may be. Loopback/private/link-local/... ones may be with ``allow_private_networks`` or
    when a network of ``allowed`` holds them; those in a cloud-metadata range (:data:`METADATA_NETWORKS`) only
    when a network of ``allowed`` that lies inside that range holds them (``169.254.169.254/32`` opens it,
    ``0.0.0.0/0`` does not), whatever ``allow_private_networks`` says.
    """
    refusal = _refusal(ip, allowed, allow_private_networks)
    return None if refusal is None else refusal[0]


def check_url(url: str, allow_private_networks: bool, allowed: Sequence[Network] = ()) -> None:
    """Cheap checks before any network I/O. Raises GuardError."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise GuardError(Reason.INVALID_URL, f"cannot parse url: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "(none)"
        raise GuardError(Reason.UNSUPPORTED_SCHEME, f"scheme {shown!r} is not allowed, only http and https")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise GuardError(Reason.INVALID_URL, f"bad host or port: {exc}") from None
    if not host:
        raise GuardError(Reason.INVALID_URL, "url has no host")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return  # a name (or a numeric form such as 2130706434): checked once resolved, at connect time
    refusal = _refusal(str(literal), allowed, allow_private_networks)
    if refusal:
        raise GuardError(Reason.BLOCKED_ADDRESS, f"{refusal[0]}: refused by the SSRF guard ({refusal[1]})")


# RFC 3986 characters that stay as they are in a path / query; everything else (spaces, non-ASCII, controls)
# is percent-encoded as UTF-8, and existing %XX escapes are kept
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


def request_url(url: str) -> str:
    """The url as a browser sends it: fragment dropped, an international host name IDNA-encoded, spaces and
    non-ASCII characters in the path and query percent-encoded as UTF-8. Raises GuardError."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise GuardError(Reason.INVALID_URL, f"host {parts.hostname!r} is not a valid domain name: {exc}") from None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        userinfo = quote(parts.username, safe="%!$&'()*+,;=-._~")
        if parts.password is not None:
            userinfo += ":" + quote(parts.password, safe="%!$&'()*+,;=-._~")
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((parts.scheme.lower(), netloc, quote(parts.path or "/", safe=_PATH_SAFE),
                       quote(parts.query, safe=_QUERY_SAFE), ""))


@dataclass
class Policy:
    allow_private_networks: bool = False
    max_bytes: int = 25_000_000
    max_seconds: float = 60.0
    allowed_networks: Sequence[str] = ()
    opener: urllib.request.OpenerDirector = field(init=False, repr=False)
    allowed: tuple[Network, ...] = field(init=False, repr=False)

    def __post_init__(self):
        self.allowed = networks(self.allowed_networks)
        self.opener = _build_opener(self)


_local = threading.local()


def _current() -> Optional[Policy]:
    return getattr(_local, "policy", None)


def _deadline() -> float:
    return getattr(_local, "deadline", float("inf"))


class using:  # noqa: N801 - used as a context manager: ``with using(policy): ...``
    """Apply ``policy`` to urllib downloads made by this thread inside the block."""

    def __init__(self, policy: Policy):
        self.policy = policy

    def __enter__(self):
        install()
        self._saved = (_current(), _deadline())
        _local.policy = self.policy
        _local.deadline = time.monotonic() + self.policy.max_seconds
        return self.policy

    def __exit__(self, *exc):
        _local.policy, _local.deadline = self._saved
        return False


def _guarded_create_connection(policy: Policy):
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, *args, **kwargs):
        host, port = address[0], address[1]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise GuardError(Reason.CONNECTION_ERROR, f"cannot resolve {host}: {exc.strerror}") from None
        if not infos:
            raise GuardError(Reason.CONNECTION_ERROR, f"cannot resolve {host}")
        for info in infos:  # every address, not only the first: the socket may try each of them
            refusal = _refusal(info[4][0], policy.allowed, policy.allow_private_networks)
            if refusal:
                raise GuardError(Reason.BLOCKED_ADDRESS, f"{host} resolves to the {refusal[0]}: refused by the SSRF "
                                 f"guard ({refusal[1]})")
        last_err: Optional[OSError] = None
        for family, socktype, proto, _, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)  # the checked address itself: no second resolution
                return sock
            except OSError as exc:
                sock.close()
                last_err = exc
        assert last_err is not None
        raise last_err

    return create


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args, policy: Policy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection(policy)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args, policy: Policy, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection(policy)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def http_open(self, req):
        return self.do_open(_GuardedHTTPConnection, req, policy=self.policy)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def https_open(self, req):
        return self.do_open(_GuardedHTTPSConnection, req, context=self._context, policy=self.policy)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = 10

    def __init__(self, policy: Policy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, self.policy.allow_private_networks, self.policy.allowed)
        return super().redirect_request(req, fp, code, msg, headers, newurl)

    def http_error_302(self, req, fp, code, msg, headers):
        # urllib refuses a redirect to another scheme itself, as a generic HTTP error: say which rule it broke
        location = headers.get("location") or headers.get("uri")
        if location:
            target = urljoin(req.full_url, location)
            if urlsplit(target).scheme.lower() not in ALLOWED_SCHEMES:
                fp.close()
                check_url(target, self.policy.allow_private_networks, self.policy.allowed)
        # urllib reads the redirect's body whole (fp.read()) before it follows: closed, it reads nothing, so an
        # endless or huge 3xx body cannot get past max_bytes / max_seconds
        fp.close()
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as exc:
            if str(exc.msg).startswith(self.inf_msg):  # urllib's loop / too-many-hops refusal
                raise GuardError(Reason.TOO_MANY_REDIRECTS, f"a redirect loop, or more than {self.max_redirections} "
                                 f"redirects (the last was HTTP {code} to {location})") from None
            raise

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


# ------------------------------------------------------------ content codings
ACCEPT_ENCODING = "gzip, deflate"  # what the request asks for: exactly what _Inflate decodes
_CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
_MAX_CODINGS = 2  # "gzip, gzip" at most: each coding holds a zlib state (~300 KB), a header must not stack 10000


def content_codings(headers) -> list[str]:
    """The ``Content-Encoding`` codings of a response in the order the server applied them, lower-case,
    without ``identity``."""
    values = headers.get_all("Content-Encoding") or []
    return [c for v in values for c in (p.strip().lower() for p in v.split(",")) if c and c != "identity"]


def _zlib_header(head: bytes) -> bool:
    """``head`` starts with a zlib (RFC 1950) header, not a raw deflate (RFC 1951) block."""
    return len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and ((head[0] << 8) | head[1]) % 31 == 0


class _Inflate:
    """One content coding undone incrementally: ``read(n)`` pulls compressed bytes from ``source`` a chunk at a
    time and returns at most ``n`` decoded bytes, so a bomb never inflates more than it is asked for.

    ``gzip`` (also accepting a zlib stream, and several gzip members one after the other, as gzip(1) does);
    ``deflate`` zlib-wrapped (RFC 9110) or raw, told apart by the first two bytes, as browsers do. Bytes after
    the end of the stream are ignored; an empty body decodes to an empty body.
    """

    def __init__(self, coding: str, source: Callable[[int], bytes]):
        self.coding = coding
        self._source = source
        self._obj = None  # zlib.decompressobj of the current stream
        self._input = b""  # compressed bytes received and not yet consumed
        self._source_done = False
        self._done = False

    def _fill(self) -> bool:
        if self._source_done:
            return False
        chunk = self._source(_CHUNK)
        if not chunk:
            self._source_done = True
            return False
        self._input += chunk
        return True

    def _begin(self) -> bool:
        """Start the first stream, or the next gzip member; False at the end of the body."""
        while len(self._input) < 2 and self._fill():
            pass
        if self._obj is None:
            if not self._input:
                return False
        elif self.coding != "gzip" or not self._input.startswith(b"\x1f\x8b"):
            return False  # what follows the stream is not another member: ignored
        wbits = 47 if self.coding == "gzip" else (15 if _zlib_header(self._input) else -15)
        self._obj = zlib.decompressobj(wbits)
        return True

    def _decompress(self, n: int) -> bytes:
        try:
            out = self._obj.decompress(self._input, n)
        except zlib.error as exc:
            raise GuardError(Reason.DOWNLOAD_ERROR, f"the body is not valid {self.coding} data, as its "
                             f"Content-Encoding says ({exc})") from None
        self._input = self._obj.unused_data if self._obj.eof else self._obj.unconsumed_tail
        return out

    def read(self, n: int) -> bytes:
        """Up to ``n`` decoded bytes; b"" at the end of the body."""
        while not self._done:
            if self._obj is None or self._obj.eof:
                if not self._begin():
                    self._done = True
                    break
            if not self._input and not self._fill():
                out = self._decompress(n)  # what zlib held back when the last call reached max_length
                if out or self._obj.eof:
                    if out:
                        return out
                    continue
                raise GuardError(Reason.DOWNLOAD_ERROR, f"the {self.coding}-encoded body ends before the end of "
                                 f"its {self.coding} stream (truncated)")
            out = self._decompress(n)
            if out:
                return out
        return b""


class _CappedResponse:
    """Wraps a response: ``read()`` decodes its Content-Encoding and stops at ``max_bytes`` (on the wire and
    decoded) and at the deadline."""

    def __init__(self, resp, max_bytes: int):
        self._resp = resp
        self.max_bytes = max_bytes
        self.headers = resp.headers
        self.status = getattr(resp, "status", None)
        self.url = getattr(resp, "url", None)
        self.declared: Optional[int] = None
        self.received = 0  # bytes on the wire
        self.decoded = 0  # bytes returned by read()
        length = resp.headers.get("Content-Length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = None
            self.declared = declared
            if declared is not None and declared > max_bytes:
                resp.close()
                raise GuardError(
                    Reason.TOO_LARGE, f"Content-Length {declared} exceeds max_bytes {max_bytes}"
                )
        self._read1 = getattr(resp, "read1", None) or resp.read
        # an unknown coding is reported by read(), so the headers (X-Robots-Tag) are still looked at first
        self._problem: Optional[GuardError] = None
        self.codings = content_codings(resp.headers)
        self._body: Callable[[int], bytes] = self._read_wire
        unknown = [c for c in self.codings if c not in _CODINGS]
        if unknown:
            self._problem = GuardError(Reason.DOWNLOAD_ERROR, f"the body has Content-Encoding {unknown[0]!r}, which "
                                       f"is not decoded (only gzip and deflate are, and only they are asked for)")
        elif len(self.codings) > _MAX_CODINGS:
            self._problem = GuardError(Reason.DOWNLOAD_ERROR, f"Content-Encoding applies {len(self.codings)} "
                                       f"codings, more than the {_MAX_CODINGS} decoded")
        else:
            undone = None
            for coding in reversed(self.codings):  # the last applied is undone first
                if undone is not None:  # what a layer inflates counts against max_bytes too, not only the end result
                    self._body = self._capped_layer(self._body, undone)
                self._body = _Inflate(_CODINGS[coding], self._body).read
                undone = coding

    def _capped_layer(self, read: Callable[[int], bytes], coding: str) -> Callable[[int], bytes]:
        """``read`` (an intermediate decoded layer), raising TOO_LARGE once it has produced over max_bytes: a
        ``gzip, gzip`` body whose inner layer inflates into an outer one that decodes to nothing stops there."""
        produced = [0]

        def capped(n: int) -> bytes:
            chunk = read(n)
            produced[0] += len(chunk)
            if produced[0] > self.max_bytes:
                raise GuardError(Reason.TOO_LARGE, f"response body exceeds max_bytes {self.max_bytes} while decoding "
                                 f"its Content-Encoding {', '.join(self.codings)} (its {coding} layer inflated past it; "
                                 f"{self.received} bytes received)")
            return chunk

        return capped

    def _read_wire(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body as sent; checks the deadline, the size cap and Content-Length."""
        if time.monotonic() > _deadline():
            raise GuardError(Reason.TIMEOUT, "download did not finish within max_seconds")
        chunk = self._read1(n)
        if not chunk:
            if self.declared is not None and self.received < self.declared:
                raise GuardError(Reason.CONNECTION_ERROR, f"the connection closed after {self.received} of the "
                                 f"{self.declared} bytes its Content-Length announced")
            return b""
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise GuardError(Reason.TOO_LARGE, f"response body exceeds max_bytes {self.max_bytes}")
        return chunk

    def read(self, amt: Optional[int] = None) -> bytes:
        if self._problem is not None:
            raise self._problem
        chunks, total = [], 0
        limit = self.max_bytes if amt is None or amt < 0 else min(amt, self.max_bytes + 1)
        while total <= limit:
            if time.monotonic() > _deadline():
                raise GuardError(Reason.TIMEOUT, "download did not finish within max_seconds")
            chunk = self._body(min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            self.decoded += len(chunk)
            if self.decoded > self.max_bytes:
                raise GuardError(Reason.TOO_LARGE, f"response body exceeds max_bytes {self.max_bytes} once decoded "
                                 f"(Content-Encoding {', '.join(self.codings)}; {self.received} bytes received)")
            if amt is not None and amt >= 0 and total >= amt:
                break
        return b"".join(chunks)

    def info(self):
        return self.headers

    def getcode(self):
        return self.status

    def geturl(self):
        return self.url

    def close(self):
        self._resp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _CapProcessor(urllib.request.BaseHandler):
    handler_order = 1001  # after HTTPErrorProcessor: only final 2xx responses arrive here

    def __init__(self, policy: Policy):
        self.policy = policy

    def http_request(self, req):
        if not req.has_header("Accept-encoding"):  # urllib stores header names capitalize()d
            req.add_unredirected_header("Accept-Encoding", ACCEPT_ENCODING)
        return req

    https_request = http_request

    def http_response(self, req, response):
        if isinstance(response, _CappedResponse):  # already wrapped by a redirected open()
            return response
        return _CappedResponse(response, self.policy.max_bytes)

    https_response = http_response


def _build_opener(policy: Policy) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.UnknownHandler(),
        _HTTPHandler(policy),
        _HTTPSHandler(policy),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectHandler(policy),
        urllib.request.HTTPErrorProcessor(),
        _CapProcessor(policy),
    ):
        opener.add_handler(handler)
    return opener


class _DispatchOpener(urllib.request.OpenerDirector):
    """Installed as urllib's global opener: routes to the calling thread's policy."""

    def __init__(self):
        super().__init__()
        self._fallback = urllib.request.build_opener()

    def open(self, fullurl, data=None, timeout=socket._GLOBAL_DEFAULT_TIMEOUT):
        policy = _current()
        opener = policy.opener if policy is not None else self._fallback
        return opener.open(fullurl, data, timeout)


_install_lock = threading.Lock()


def install() -> None:
    """Install the dispatching opener as urllib's global opener (idempotent)."""
    if isinstance(urllib.request._opener, _DispatchOpener):  # noqa: SLF001
        return
    with _install_lock:
        if not isinstance(urllib.request._opener, _DispatchOpener):  # noqa: SLF001
            urllib.request.install_opener(_DispatchOpener())


# ------------------------------------------------------------ error mapping
_TAG = re.compile(r"\[([a-z_]+)\]")
_PATTERNS: list[tuple[re.Pattern, Reason]] = [
    (re.compile(r"X-Robots-Tag", re.I), Reason.ROBOTS_DISALLOWED),
    (re.compile(r"redirect error that would lead to an infinite loop", re.I), Reason.TOO_MANY_REDIRECTS),
    (re.compile(r"^HTTP Error \d+", re.I), Reason.HTTP_ERROR),
    (re.compile(r"timed out|timeout", re.I), Reason.TIMEOUT),
    (re.compile(r"unknown url type|no host given", re.I), Reason.INVALID_URL),
    (
        re.compile(
            r"refused|reset|broken pipe|unreachable|name or service|nodename|getaddrinfo|"
            r"temporary failure in name|remote end closed|connection aborted|ssl|certificate|"
            r"incompleteread|badstatusline|protocol|eof occurred",
            re.I,
        ),
        Reason.CONNECTION_ERROR,
    ),
]


def strip_tag(message: str) -> str:
    """The message without the leading ``[reason]`` tag (the reason has its own column)."""
    m = _TAG.search(message)
    if m is None:
        return message
    rest = message[m.end():].strip()
    return rest[:-1] if message.startswith("<urlopen error") and rest.endswith(">") else rest


def classify_error(message: str) -> Reason:
    """Map a download error message to a reason code."""
    tag = _TAG.search(message)
    if tag:
        try:
            return Reason(tag.group(1))
        except ValueError:
            pass
    for pattern, reason in _PATTERNS:
        if pattern.search(message):
            return reason
    return Reason.DOWNLOAD_ERROR
