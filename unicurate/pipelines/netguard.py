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
  checked the same way, since each hop opens a new guarded connection;
* a response-size cap enforced from ``Content-Length`` and while streaming, and
  a body shorter than its ``Content-Length`` is an error, not a truncated image;
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
from dataclasses import dataclass, field
from typing import Optional, Sequence
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


def address_problem(ip: str, allowed: Sequence[Network] = ()) -> Optional[str]:
    """Why connecting to ``ip`` is refused by the SSRF guard, or None when it is public or in ``allowed``."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in allowed):
        return None
    for attr, label in (
        ("is_loopback", "loopback"),
        ("is_unspecified", "unspecified"),
        ("is_link_local", "link-local"),  # 169.254.169.254: cloud metadata services
        ("is_multicast", "multicast"),
        ("is_reserved", "reserved"),
        ("is_private", "private"),
    ):
        if getattr(addr, attr):
            return f"{label} address {addr}"
    if not addr.is_global:
        return f"non-global address {addr}"
    return None


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
    if not allow_private_networks:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return
        problem = address_problem(str(literal), allowed)
        if problem:
            raise GuardError(Reason.BLOCKED_ADDRESS, f"{problem}: refused by the SSRF guard ({_ALLOW_HINT})")


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
        if not policy.allow_private_networks:
            for info in infos:
                problem = address_problem(info[4][0], policy.allowed)
                if problem:
                    raise GuardError(Reason.BLOCKED_ADDRESS,
                                     f"{host} resolves to the {problem}: refused by the SSRF guard ({_ALLOW_HINT})")
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
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as exc:
            if str(exc.msg).startswith(self.inf_msg):  # urllib's loop / too-many-hops refusal
                raise GuardError(Reason.TOO_MANY_REDIRECTS, f"a redirect loop, or more than {self.max_redirections} "
                                 f"redirects (the last was HTTP {code} to {location})") from None
            raise

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


class _CappedResponse:
    """Wraps a response: ``read()`` stops at ``max_bytes`` and at the deadline."""

    def __init__(self, resp, max_bytes: int):
        self._resp = resp
        self.max_bytes = max_bytes
        self.headers = resp.headers
        self.status = getattr(resp, "status", None)
        self.url = getattr(resp, "url", None)
        self.declared: Optional[int] = None
        self.received = 0
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

    def read(self, amt: Optional[int] = None) -> bytes:
        chunks, total = [], 0
        limit = self.max_bytes if amt is None or amt < 0 else min(amt, self.max_bytes + 1)
        read1 = getattr(self._resp, "read1", None) or self._resp.read
        while total <= limit:
            if time.monotonic() > _deadline():
                raise GuardError(Reason.TIMEOUT, "download did not finish within max_seconds")
            chunk = read1(min(_CHUNK, limit + 1 - total))
            if not chunk:
                if self.declared is not None and self.received < self.declared:
                    raise GuardError(Reason.CONNECTION_ERROR, f"the connection closed after {self.received} of the "
                                     f"{self.declared} bytes its Content-Length announced")
                break
            chunks.append(chunk)
            total += len(chunk)
            self.received += len(chunk)
            if self.received > self.max_bytes:
                raise GuardError(Reason.TOO_LARGE, f"response body exceeds max_bytes {self.max_bytes}")
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
