"""TLS for the balancer's HTTPS listener (driver: builds an `ssl.SSLContext` from config).

Modern protocol versions only: TLS 1.2 is the floor (RFC 8996 deprecated 1.0 and 1.1; Mozilla's
"intermediate" profile), 1.3 with `min_version = "1.3"` (Mozilla "modern"). TLS 1.2 is limited
to forward-secret AEAD suites (ECDHE with AES-GCM or ChaCha20-Poly1305), as in Mozilla's
intermediate list; TLS 1.3 suites are all AEAD already. Compression is off (CRIME). ALPN offers
`http/1.1` only, since that is what the proxy speaks.

Every problem with the certificate or key becomes a one-line `ConfigError` naming the setting,
because a TLS error at start-up is almost always a wrong path or a key that belongs to another
certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from taxiway.config import TLSConfig
from taxiway.errors import ConfigError

# Mozilla intermediate (v5.7) TLS 1.2 suites, in OpenSSL names.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _check_readable(path: str, key: str) -> None:
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise ConfigError(key, "an existing PEM file (make one with `taxiway cert dev`)", path) from None
    except OSError as exc:
        raise ConfigError(key, f"a readable PEM file ({exc.strerror})", path) from None
    if b"-----BEGIN " not in head:
        raise ConfigError(key, "a PEM file (text starting with -----BEGIN ...)", path)


def make_server_context(tls_cfg: TLSConfig) -> ssl.SSLContext:
    """An SSLContext for the HTTPS listener.

    Raises:
        ConfigError: a file is missing, unreadable or not PEM (names `listen.tls.cert` or
            `listen.tls.key`), or the key does not match the certificate. The caller prints it
            and exits; nothing is listening yet.
    """
    _check_readable(tls_cfg.cert, "listen.tls.cert")
    _check_readable(tls_cfg.key, "listen.tls.key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls_cfg.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(tls_cfg.cert, tls_cfg.key)
    except ssl.SSLError as exc:
        reason = (exc.reason or str(exc)).lower()
        if "mismatch" in reason or "values" in reason:
            raise ConfigError("listen.tls.key", "the private key that belongs to listen.tls.cert",
                              tls_cfg.key) from None
        raise ConfigError("listen.tls", f"a PEM certificate and unencrypted key ({exc.reason or exc})",
                          f"{tls_cfg.cert}, {tls_cfg.key}") from None
    return ctx
