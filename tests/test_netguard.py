"""The download policy: SSRF guard, schemes, size cap, deadline, error classification."""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
import tracemalloc
import urllib.request
import zlib
from urllib.parse import quote, unquote

import pytest

import hostileweb
from unicurate.config import DownloadConfig
from unicurate.download import netguard
from unicurate.download.fetch import download
from unicurate.schema import Reason


TEXT = b"The quick brown fox jumps over the lazy dog. " * 200
BOMB = hostileweb.gzip_bomb(256 << 20)  # 256 KiB of gzip, 256 MiB of zeros once inflated
# path -> (Content-Encoding, body)
ENCODED = {
    "/enc/gzip": ("gzip", gzip.compress(TEXT)),
    "/enc/x-gzip": ("x-gzip", gzip.compress(TEXT)),
    "/enc/GZIP-upper": ("GZIP", gzip.compress(TEXT)),
    "/enc/gzip-members": ("gzip", gzip.compress(TEXT[:1000]) + gzip.compress(TEXT[1000:])),
    "/enc/gzip-trailing-junk": ("gzip", gzip.compress(TEXT) + b"\0\0junk"),
    "/enc/deflate-zlib": ("deflate", zlib.compress(TEXT)),
    "/enc/deflate-raw": ("deflate", hostileweb.deflate_raw(TEXT)),
    "/enc/identity": ("identity", TEXT),
    "/enc/gzip-gzip": ("gzip, gzip", gzip.compress(gzip.compress(TEXT))),
    "/enc/deflate-then-gzip": ("deflate, gzip", gzip.compress(zlib.compress(TEXT))),
    "/enc/gzip-empty": ("gzip", b""),
    "/enc/bomb": ("gzip", BOMB),
    "/enc/br": ("br", b"\x1b\x00\x00"),
    "/enc/zstd": ("zstd", b"\x28\xb5\x2f\xfd"),
    "/enc/gzip-x3": ("gzip, gzip, gzip", gzip.compress(gzip.compress(gzip.compress(TEXT)))),
    "/enc/gzip-corrupt": ("gzip", gzip.compress(TEXT)[:20] + b"\xff" * 40 + gzip.compress(TEXT)[60:]),
    "/enc/gzip-on-plain": ("gzip", TEXT),
    # deflate of 400,000 empty stored blocks (2 MB that decode to nothing), then gzip (a few KB on the wire): the
    # gzip layer inflates past max_bytes while the final output stays empty
    "/enc/layer-bomb": ("deflate, gzip", gzip.compress(b"\x00\x00\x00\xff\xff" * 400_000 + b"\x03\x00")),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        if self.path in ENCODED:
            coding, body = ENCODED[self.path]
            self.send_response(200)
            self.send_header("Content-Encoding", coding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:  # the client stopped reading (the bomb)
                pass
        elif self.path == "/enc/gzip-truncated":  # no Content-Length: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(gzip.compress(TEXT)[:-12])
            self.close_connection = True
        elif self.path == "/enc/br-noai":
            self.send_response(200)
            self.send_header("Content-Encoding", "br")
            self.send_header("X-Robots-Tag", "noai")
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"\x1b\x00\x00")
        elif self.path == "/echo/accept-encoding":  # the request's Accept-Encoding, as the body
            body = (self.headers.get("Accept-Encoding") or "(none)").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/redirect-dripping-body":  # a 302 whose body drips for 5 s: never read
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"r")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path.startswith("/redirect-to/"):  # 302 to the percent-encoded url after the prefix
            self.send_response(302)
            self.send_header("Location", unquote(self.path[len("/redirect-to/"):]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big":
            body = b"x" * 50_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/lying-length":  # says small, sends a lot (no length check possible up front)
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"y" * 100)
        elif self.path == "/chunked-big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: read until close
            for _ in range(50):
                self.wfile.write(b"z" * 1000)
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"d")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://example.com/x.jpg")
            self.end_headers()
        elif self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _fetch(url, **cfg):
    c = DownloadConfig(**{"timeout": 2, "allow_private_networks": True, **cfg})
    policy = netguard.Policy(c.allow_private_networks, c.max_bytes, c.max_seconds, tuple(c.allowed_networks))
    try:
        return download(url, c, policy)
    except netguard.GuardError as exc:
        return None, str(exc)


def _reason(err):
    return netguard.classify_error(err)


def quote_url(url: str) -> str:
    """``url`` as one path segment, for the server's ``/redirect-to/`` route."""
    return quote(url, safe="")


def test_ssrf_guard_refuses_loopback_unless_allowed(server):
    data, err = _fetch(server + "/ok", allow_private_networks=False)
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS
    data, err = _fetch(server + "/ok", allow_private_networks=True)
    assert data == b"hello" and err is None


def test_ssrf_guard_checks_resolved_names(server):
    # "localhost" is a name, not an IP literal: the guard must resolve it and refuse.
    port = server.rsplit(":", 1)[1]
    data, err = _fetch(f"http://localhost:{port}/ok", allow_private_networks=False)
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS
    assert "resolves to the loopback address" in err


@pytest.mark.parametrize("ip", ["10.1.2.3", "192.168.0.1", "169.254.169.254", "172.16.0.9", "::1", "0.0.0.0", "224.0.0.1"])
def test_private_literals_refused_before_any_io(ip):
    host = f"[{ip}]" if ":" in ip else ip
    with pytest.raises(netguard.GuardError) as exc:
        netguard.check_url(f"http://{host}/x.jpg", allow_private_networks=False)
    assert exc.value.reason == Reason.BLOCKED_ADDRESS


def test_public_address_allowed():
    assert netguard.address_problem("8.8.8.8") is None
    assert netguard.address_problem("::ffff:127.0.0.1") is not None  # v4-mapped loopback


@pytest.mark.parametrize("url,reason", [
    ("file:///etc/passwd", Reason.UNSUPPORTED_SCHEME),
    ("ftp://example.com/a.jpg", Reason.UNSUPPORTED_SCHEME),
    ("data:image/png;base64,AAAA", Reason.UNSUPPORTED_SCHEME),
    ("not a url", Reason.UNSUPPORTED_SCHEME),
    ("http:///nohost.jpg", Reason.INVALID_URL),
    ("http://example.com:99999/x", Reason.INVALID_URL),
])
def test_schemes_and_malformed_urls(url, reason):
    with pytest.raises(netguard.GuardError) as exc:
        netguard.check_url(url, allow_private_networks=True)
    assert exc.value.reason == reason


def test_redirect_to_other_scheme_refused(server):
    data, err = _fetch(server + "/to-ftp")
    assert data is None and _reason(err) == Reason.UNSUPPORTED_SCHEME


def test_redirect_handler_rechecks_private_targets():
    policy = netguard.Policy(allow_private_networks=False)
    handler = netguard._RedirectHandler(policy)
    req = urllib.request.Request("http://93.184.216.34/a.jpg")
    with pytest.raises(netguard.GuardError) as exc:
        handler.redirect_request(req, None, 302, "Found", {}, "http://169.254.169.254/latest/meta-data")
    assert exc.value.reason == Reason.BLOCKED_ADDRESS


def test_size_cap_from_content_length_and_while_streaming(server):
    data, err = _fetch(server + "/big", max_bytes=10_000)
    assert data is None and _reason(err) == Reason.TOO_LARGE and "Content-Length" in err
    data, err = _fetch(server + "/chunked-big", max_bytes=10_000)
    assert data is None and _reason(err) == Reason.TOO_LARGE
    data, err = _fetch(server + "/chunked-big", max_bytes=100_000)
    assert data is not None and len(data) == 50_000


def test_slow_drip_hits_overall_deadline(server):
    start = time.monotonic()
    data, err = _fetch(server + "/drip", timeout=2, max_seconds=1.0)
    assert data is None and _reason(err) == Reason.TIMEOUT
    assert time.monotonic() - start < 4


def test_http_errors_and_refused_connections(server):
    data, err = _fetch(server + "/missing")
    assert _reason(err) == Reason.HTTP_ERROR and "404" in err
    data, err = _fetch("http://127.0.0.1:9/x.jpg")  # discard port: nothing listens
    assert _reason(err) == Reason.CONNECTION_ERROR


def test_policy_is_per_thread_and_default_opener_untouched(server):
    netguard.install()
    # Outside a policy, urllib behaves as usual (loopback allowed, file:// works).
    with urllib.request.urlopen(server + "/ok", timeout=2) as r:
        assert r.read() == b"hello"


def test_classify_error_messages():
    assert netguard.classify_error("HTTP Error 503: Service Unavailable") == Reason.HTTP_ERROR
    assert netguard.classify_error("<urlopen error timed out>") == Reason.TIMEOUT
    assert netguard.classify_error("Use of image disallowed by X-Robots-Tag directive") == Reason.ROBOTS_DISALLOWED
    assert netguard.classify_error("<urlopen error [Errno 111] Connection refused>") == Reason.CONNECTION_ERROR
    assert netguard.classify_error("<urlopen error [too_large] body>") == Reason.TOO_LARGE
    assert netguard.classify_error("something odd") == Reason.DOWNLOAD_ERROR
    assert netguard.strip_tag("<urlopen error [blocked_address] x is a loopback address>") == "x is a loopback address"


def test_public_looking_name_resolving_to_loopback_is_refused_unless_allowed(server, monkeypatch):
    """DNS decides, not the name: photos.cdn-example.com pointing at 127.0.0.1 is loopback."""
    port = server.rsplit(":", 1)[1]
    monkeypatch.setattr(socket, "getaddrinfo",
                        hostileweb.fake_getaddrinfo({"photos.cdn-example.com": ["127.0.0.1"]}, socket.getaddrinfo))
    url = f"http://photos.cdn-example.com:{port}/ok"
    data, err = _fetch(url, allow_private_networks=False)
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS
    assert "photos.cdn-example.com resolves to the loopback address 127.0.0.1" in err
    # another network allowed: still refused
    data, err = _fetch(url, allow_private_networks=False, allowed_networks=["10.0.0.0/8"])
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS
    data, err = _fetch(url, allow_private_networks=False, allowed_networks=["127.0.0.1/32"])
    assert data == b"hello" and err is None
    data, err = _fetch(url, allow_private_networks=True)
    assert data == b"hello" and err is None


def test_allowed_networks_exempt_only_their_addresses():
    allowed = netguard.networks(["127.0.0.1/32", "fd00::/8"])
    assert netguard.address_problem("127.0.0.1", allowed) is None
    assert netguard.address_problem("fd12::1", allowed) is None
    assert "loopback" in netguard.address_problem("127.0.0.2", allowed)
    assert "link-local" in netguard.address_problem("169.254.169.254", allowed)
    with pytest.raises(netguard.GuardError):
        netguard.check_url("http://10.0.0.1/x.jpg", False, allowed)
    netguard.check_url("http://127.0.0.1:8080/x.jpg", False, allowed)  # no error
    with pytest.raises(ValueError, match="allowed_networks.*not an IP network"):
        DownloadConfig(allowed_networks=["10.0.0.0/33"])


@pytest.mark.parametrize("url,wire", [
    ("http://h/a photo.jpg", "http://h/a%20photo.jpg"),
    ("http://h/café/日本.jpg", "http://h/caf%C3%A9/%E6%97%A5%E6%9C%AC.jpg"),
    ("http://h/already%20escaped.jpg?q=1", "http://h/already%20escaped.jpg?q=1"),
    ("http://h/x.jpg?name=a b&t=é#frag", "http://h/x.jpg?name=a%20b&t=%C3%A9"),
    ("HTTP://h:8080", "http://h:8080/"),
    ("https://bücher.example/x.jpg", "https://xn--bcher-kva.example/x.jpg"),
    ("http://[::1]:81/x", "http://[::1]:81/x"),
    ("http://h/a\tb\x7f.jpg", "http://h/ab%7F.jpg"),  # tabs and newlines are dropped (WHATWG), DEL escaped
])
def test_request_url_is_what_a_browser_sends(url, wire):
    assert netguard.request_url(url) == wire


def test_body_shorter_than_content_length_is_a_connection_error():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n" + b"x" * 300)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    data, err = _fetch(f"http://127.0.0.1:{srv.getsockname()[1]}/short")
    srv.close()
    assert data is None and _reason(err) == Reason.CONNECTION_ERROR
    assert "after 300 of the 1000 bytes" in err


def test_redirect_loop_has_its_own_reason():
    msg = ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
           "The last 30x error message was:\nFound")
    assert netguard.classify_error(msg) == Reason.TOO_MANY_REDIRECTS


# ------------------------------------------------------------ content codings
@pytest.mark.parametrize("path", ["/enc/gzip", "/enc/x-gzip", "/enc/GZIP-upper", "/enc/gzip-members",
                                  "/enc/gzip-trailing-junk", "/enc/deflate-zlib", "/enc/deflate-raw", "/enc/identity",
                                  "/enc/gzip-gzip", "/enc/deflate-then-gzip"])
def test_content_encodings_are_decoded(server, path):
    data, err = _fetch(server + path)
    assert err is None and data == TEXT


def test_accept_encoding_asks_for_what_is_decoded(server):
    data, err = _fetch(server + "/echo/accept-encoding")
    assert data == netguard.ACCEPT_ENCODING.encode() == b"gzip, deflate"
    # and after a redirect (a new request: urllib does not carry unredirected headers over)
    data, err = _fetch(server + "/redirect-to/" + quote_url(server + "/echo/accept-encoding"))
    assert data == b"gzip, deflate"


def test_gzip_encoded_empty_body_is_empty(server):
    data, err = _fetch(server + "/enc/gzip-empty")
    assert data == b"" and err is None


def test_gzip_bomb_stops_at_max_bytes_without_inflating(server):
    """256 KiB on the wire, 256 MiB inflated: stopped at max_bytes of decoded output, memory bounded by it."""
    tracemalloc.start()
    try:
        data, err = _fetch(server + "/enc/bomb", max_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data is None and _reason(err) == Reason.TOO_LARGE
    assert "exceeds max_bytes 1048576 once decoded" in err and "Content-Encoding gzip" in err
    assert peak < 8 << 20, f"peak {peak >> 20} MiB of Python allocations"
    # under the cap the same bytes are fine: the cap is on the decoded size, not a ratio
    data, err = _fetch(server + "/enc/gzip", max_bytes=len(TEXT))
    assert data == TEXT
    data, err = _fetch(server + "/enc/gzip", max_bytes=len(TEXT) - 1)
    assert data is None and _reason(err) == Reason.TOO_LARGE


def test_wire_size_is_capped_too(server):
    data, err = _fetch(server + "/enc/bomb", max_bytes=100_000)  # the bomb's Content-Length is past it
    assert data is None and _reason(err) == Reason.TOO_LARGE and "Content-Length" in err


@pytest.mark.parametrize("path,words", [
    ("/enc/br", "Content-Encoding 'br'"),
    ("/enc/zstd", "Content-Encoding 'zstd'"),
    ("/enc/gzip-x3", "3 codings"),
    ("/enc/gzip-corrupt", "not valid gzip data"),
    ("/enc/gzip-on-plain", "not valid gzip data"),
    ("/enc/gzip-truncated", "ends before the end of its gzip stream"),
])
def test_undecodable_bodies_are_download_errors(server, path, words):
    data, err = _fetch(server + path)
    assert data is None and _reason(err) == Reason.DOWNLOAD_ERROR and words in err, err


def test_robots_opt_out_is_read_before_an_unknown_coding(server):
    data, err = _fetch(server + "/enc/br-noai")
    assert data is None and _reason(err) == Reason.ROBOTS_DISALLOWED


def test_inflate_returns_at_most_what_is_asked():
    pos = 0

    def source(n):
        nonlocal pos
        chunk = BOMB[pos:pos + min(n, 1000)]
        pos += len(chunk)
        return chunk

    inflate = netguard._Inflate("gzip", source)
    decoded = 0
    for n in (1, 10, 65536, 1 << 20, 1 << 20, 1 << 20):
        out = inflate.read(n)
        assert 0 < len(out) <= n and out.count(0) == len(out)
        decoded += len(out)
    assert decoded > 1 << 20 and pos < decoded // 100  # what was read from the source is what the output needed


# ------------------------------------------------------------ cloud metadata stays closed
@pytest.fixture
def fence(monkeypatch):
    """Connections beyond loopback are refused and recorded: a test of the guard never sends anything there."""
    attempts: list = []
    monkeypatch.setattr(socket.socket, "connect", hostileweb.loopback_only(socket.socket.connect, attempts))
    return attempts


METADATA_NAMES = {"metadata.test": ["169.254.169.254"], "ec2-v6.test": ["fd00:ec2::254"],
                  "openstack-v6.test": ["fe80::a9fe:a9fe"], "mixed-metadata.test": ["127.0.0.1", "169.254.169.254"],
                  "alibaba.test": ["100.100.100.200"], "mapped.test": ["::ffff:169.254.169.254"]}


@pytest.fixture
def metadata_dns(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", hostileweb.fake_getaddrinfo(METADATA_NAMES, socket.getaddrinfo))


@pytest.mark.parametrize("host,shown", [
    ("169.254.169.254", "169.254.169.254"), ("169.254.0.1", "169.254.0.1"), ("[fd00:ec2::254]", "fd00:ec2::254"),
    ("[fe80::a9fe:a9fe]", "fe80::a9fe:a9fe"), ("[::ffff:169.254.169.254]", "169.254.169.254"),
    ("[64:ff9b::a9fe:a9fe]", "169.254.169.254"), ("100.100.100.200", "100.100.100.200"),
])
def test_metadata_literals_refused_even_with_allow_private_networks(host, shown):
    with pytest.raises(netguard.GuardError) as exc:
        netguard.check_url(f"http://{host}/latest/meta-data/", allow_private_networks=True)
    assert exc.value.reason == Reason.BLOCKED_ADDRESS
    assert shown in str(exc.value) and "even with download.allow_private_networks" in str(exc.value)


@pytest.mark.parametrize("name,shown", [("metadata.test", "169.254.169.254"), ("ec2-v6.test", "fd00:ec2::254"),
                                        ("openstack-v6.test", "fe80::a9fe:a9fe"),
                                        ("mixed-metadata.test", "169.254.169.254"),
                                        ("alibaba.test", "100.100.100.200"), ("mapped.test", "169.254.169.254")])
def test_names_resolving_to_metadata_refused_at_connect_with_allow_private_networks(server, metadata_dns, fence,
                                                                                     name, shown):
    port = server.rsplit(":", 1)[1]
    data, err = _fetch(f"http://{name}:{port}/ok", allow_private_networks=True)
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS
    assert f"{name} resolves to the" in err and shown in err
    assert fence == []


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
                                    "http://metadata.test:{port}/latest/meta-data/", "http://2852039166/"])
def test_redirect_to_metadata_refused_with_allow_private_networks(server, metadata_dns, fence, target):
    target = target.format(port=server.rsplit(":", 1)[1])
    data, err = _fetch(server + "/redirect-to/" + quote_url(target), allow_private_networks=True)
    assert data is None and _reason(err) == Reason.BLOCKED_ADDRESS and "metadata" in err, err
    assert fence == []


def test_guarded_connection_rechecks_metadata_at_connect(metadata_dns, fence):
    """The connect-time check on its own (a name passes check_url; DNS may change before the connect)."""
    create = netguard._guarded_create_connection(netguard.Policy(allow_private_networks=True))
    with pytest.raises(netguard.GuardError) as exc:
        create(("metadata.test", 80))
    assert exc.value.reason == Reason.BLOCKED_ADDRESS and "169.254.169.254" in str(exc.value)
    assert fence == []


def test_metadata_opened_only_by_an_allowed_network_inside_its_range(metadata_dns, fence):
    def problem(ip, cidrs, private=True):
        return netguard.address_problem(ip, netguard.networks(cidrs), private)

    assert problem("169.254.169.254", ["169.254.169.254/32"]) is None
    assert problem("169.254.169.254", ["169.254.0.0/16"], private=False) is None
    assert problem("::ffff:169.254.169.254", ["169.254.169.254/32"]) is None
    assert problem("169.254.169.253", ["169.254.169.254/32"]) is not None
    assert problem("fe80::1", ["fe80::/64"]) is None
    for broad in (["0.0.0.0/0", "::/0"], ["169.0.0.0/8"], ["fd00::/8"], ["fe80::/9"]):
        for ip in ("169.254.169.254", "fd00:ec2::254", "fe80::1"):
            assert problem(ip, broad) is not None and problem(ip, broad, private=False) is not None, (ip, broad)
    # other private addresses keep their rules
    assert problem("10.0.0.1", []) is None and problem("10.0.0.1", [], private=False) is not None
    assert problem("10.0.0.1", ["0.0.0.0/0"], private=False) is None
    # listed explicitly, the guard lets the connection through (the fence stops it here: nothing is sent)
    policy = netguard.Policy(allow_private_networks=True, allowed_networks=("169.254.169.254/32",))
    with pytest.raises(ConnectionRefusedError, match="test fence"):
        netguard._guarded_create_connection(policy)(("metadata.test", 80))
    assert fence == [["169.254.169.254", 80]]


def test_a_redirect_body_is_not_read(server):
    """urllib reads a 3xx body whole before following it: that body would escape max_bytes and max_seconds."""
    start = time.monotonic()
    data, err = _fetch(server + "/redirect-dripping-body", max_seconds=2)
    assert err is None and data == b"hello"
    assert time.monotonic() - start < 2.0


def test_every_content_coding_layer_counts_against_max_bytes(server):
    data, err = _fetch(server + "/enc/layer-bomb", max_bytes=1_000_000)
    assert data is None and netguard.classify_error(err) is Reason.TOO_LARGE, err
    assert "gzip layer inflated past it" in err
