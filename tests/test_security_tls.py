"""TLS: `taxiway cert dev` makes a usable CA + cert; the server context speaks TLS 1.2+ only."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from taxiway.config import TLSConfig
from taxiway.errors import ConfigError
from taxiway.security.certcmd import make_dev_certs
from taxiway.security.tls import make_server_context
from tests.conftest import taxiway_env


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    res = subprocess.run([sys.executable, "-m", "taxiway", "cert", "dev", "--dir", str(d),
                          "--hosts", "localhost,127.0.0.1"], env=taxiway_env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "[listen.tls]" in res.stdout
    return d


class TLSServer:
    """A real TLS listener on a thread: handshakes, answers b"ok", records the negotiated version."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.versions: list[str | None] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.versions.append(tls.version())
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(certs: Path) -> Iterator[TLSServer]:
    s = TLSServer(make_server_context(TLSConfig(cert=str(certs / "cert.pem"), key=str(certs / "key.pem"))))
    yield s
    s.close()


def _client(certs: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if version < ssl.TLSVersion.TLSv1_2:
        # Let the *client* offer old versions, so a failure is the server's refusal.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that's the point
        ctx.minimum_version = version
        ctx.maximum_version = version
    return ctx


def _handshake(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> tuple[str | None, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        return tls.version(), tls.recv(2)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["1.2", "1.3"])
def test_modern_clients_complete_a_verified_handshake(certs: Path, server: TLSServer,
                                                      version: ssl.TLSVersion) -> None:
    got, data = _handshake(server.port, _client(certs, version))
    assert data == b"ok"
    assert got == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_ip_address_san_verifies(certs: Path, server: TLSServer) -> None:
    assert _handshake(server.port, _client(certs, ssl.TLSVersion.TLSv1_3), host="127.0.0.1")[1] == b"ok"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1], ids=["1.1", "1.0"])
def test_old_protocol_versions_are_refused(certs: Path, server: TLSServer, version: ssl.TLSVersion) -> None:
    with pytest.raises(ssl.SSLError) as err:
        _handshake(server.port, _client(certs, version))
    # An alert *received* from the server: it refused the version (the client was willing).
    assert "ALERT_PROTOCOL_VERSION" in str(err.value)
    assert server.versions == []


def test_min_version_13_refuses_12(certs: Path) -> None:
    s = TLSServer(make_server_context(TLSConfig(cert=str(certs / "cert.pem"), key=str(certs / "key.pem"),
                                                min_version="1.3")))
    try:
        with pytest.raises(ssl.SSLError):
            _handshake(s.port, _client(certs, ssl.TLSVersion.TLSv1_2))
        assert _handshake(s.port, _client(certs, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
    finally:
        s.close()


def test_untrusted_client_refuses_dev_cert_without_the_ca(server: TLSServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server.port, ssl.create_default_context())


def test_private_keys_are_owner_only_and_ca_is_reused(certs: Path, tmp_path: Path) -> None:
    assert os.stat(certs / "key.pem").st_mode & 0o077 == 0
    assert os.stat(certs / "ca-key.pem").st_mode & 0o077 == 0
    first = make_dev_certs(tmp_path, "localhost")
    ca_before, cert_before = first["ca"].read_bytes(), first["cert"].read_bytes()
    second = make_dev_certs(tmp_path, "localhost")
    assert second["ca"].read_bytes() == ca_before
    assert second["cert"].read_bytes() != cert_before


@pytest.mark.parametrize(
    ("which", "content", "key_named"),
    [
        pytest.param("cert", None, "listen.tls.cert", id="missing-cert"),
        pytest.param("key", None, "listen.tls.key", id="missing-key"),
        pytest.param("cert", b"hello", "listen.tls.cert", id="cert-not-pem"),
    ],
)
def test_bad_files_are_one_line_config_errors(certs: Path, tmp_path: Path, which: str,
                                              content: bytes | None, key_named: str) -> None:
    paths = {"cert": str(certs / "cert.pem"), "key": str(certs / "key.pem")}
    bad = tmp_path / f"{which}.pem"
    if content is not None:
        bad.write_bytes(content)
    paths[which] = str(bad)
    with pytest.raises(ConfigError) as err:
        make_server_context(TLSConfig(**paths))
    assert err.value.key == key_named
    assert "\n" not in str(err.value)


def test_key_of_another_certificate_is_named(certs: Path, tmp_path: Path) -> None:
    other = make_dev_certs(tmp_path / "other", "localhost")
    with pytest.raises(ConfigError) as err:
        make_server_context(TLSConfig(cert=str(certs / "cert.pem"), key=str(other["key"])))
    assert err.value.key == "listen.tls.key"
    assert "belongs to" in str(err.value)


def test_cert_dev_bad_hosts_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "taxiway", "cert", "dev", "--dir", str(tmp_path),
                          "--hosts", "bad host!"], env=taxiway_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "--hosts" in res.stderr and "Traceback" not in res.stderr


# -- handshakes count, are bounded, and never see clear text (issue 11, C11) ------------------


def _https_balancer(certs: Path, **sections: dict[str, object]) -> tuple[object, int]:
    from tests.proxy_support import InProcess, Origin, make_config, ok_response

    origin = Origin(lambda req: ok_response(b"ok"))
    port = __import__("tests.conftest", fromlist=["free_port"]).free_port()
    cfg = make_config([origin.port], **sections)
    cfg = cfg.replace('[listen]\n', f'[listen]\nhttps = "127.0.0.1:{port}"\n', 1) + (
        f'[listen.tls]\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n')
    lb = InProcess(cfg)
    lb.origin = origin   # type: ignore[attr-defined]
    return lb, port


def test_tls_handshakes_count_against_limits_and_time_out(certs: Path) -> None:
    import time

    lb, port = _https_balancer(certs, limits={"max_connections_per_client": 5},
                               timeouts={"client_header": "1s"})
    try:
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        time.sleep(0.3)
        assert lb.run(lambda: lb.bal.connections) == 5     # seen (and in /status) before any hello
        sixth = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert sixth.recv(10) == b""                       # over the per-client cap: cut at once
        sixth.close()
        t0 = time.monotonic()
        for s in silent:                                   # cut at timeouts.client_header
            s.settimeout(5)
            try:
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
            s.close()
        assert time.monotonic() - t0 < 4
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /a#b HTTP/1.1\r\nHost: localhost\r\n\r\n")   # refused by taxiway itself
            answer = tls.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"\r\nStrict-Transport-Security: max-age=" in answer       # HSTS on its own answers too
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert tls.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert lb.run(lambda: lb.bal.fold_counters()["tls_handshake_failed"]) >= 5
    finally:
        lb.stop()
        lb.origin.close()   # type: ignore[attr-defined]


def test_request_in_the_first_tls_flight_is_answered_over_tls(certs: Path) -> None:
    """A client that sends its request right behind the handshake (the bytes may reach taxiway
    before start_tls hands back the TLS transport) still gets its answer encrypted."""
    lb, port = _https_balancer(certs)
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost",
                                    do_handshake_on_connect=True) as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n"
                            b"Connection: close\r\n\r\n")
                out = b""
                while out.count(b"HTTP/1.1 200 ") < 2:
                    d = tls.recv(65536)
                    assert d, out
                    out += d
    finally:
        lb.stop()
        lb.origin.close()   # type: ignore[attr-defined]
