"""The download policy: SSRF guard, schemes, size cap, deadline, error classification."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.request

import pytest

import hostileweb
from unicurate.config import DownloadConfig
from unicurate.pipelines import netguard
from unicurate.pipelines.fetch import download
from unicurate.schema import Reason


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        if self.path == "/big":
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
