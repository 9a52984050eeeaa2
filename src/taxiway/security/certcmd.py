"""`taxiway cert dev`: a local certificate authority and a server certificate for development.

Writes into `--dir` (default `.taxiway/tls`):
  ca.pem, ca-key.pem      a local CA (kept and reused, so you trust it once)
  cert.pem, key.pem       a server certificate for `--hosts`, signed by that CA (remade each run)
Keys are ECDSA P-256 and written 0600. Clients trust `ca.pem` (curl --cacert, or your OS/browser
store). This CA is for your machine only: never ship `ca-key.pem` or trust it elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from taxiway.errors import UsageError

HELP = "Make a local CA and a server certificate for development (dev only; never for production)."
CA_DAYS = 3650
LEAF_DAYS = 397   # the CA/Browser Forum maximum for server certificates
_LABEL = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    d = sub.add_parser("dev", help="local CA + server certificate for localhost")
    d.add_argument("--dir", default=".taxiway/tls", help="output directory (default .taxiway/tls)")
    d.add_argument("--hosts", default="localhost,127.0.0.1,::1",
                   help="comma-separated DNS names and IP addresses (default localhost,127.0.0.1,::1)")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _names(hosts: str) -> list[object]:
    from cryptography import x509

    out: list[object] = []
    for h in (h.strip() for h in hosts.split(",")):
        if not h:
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not all(_LABEL.match(part) for part in h.split(".")):
                raise UsageError(f"--hosts: {h!r} is neither a DNS name nor an IP address") from None
            out.append(x509.DNSName(h))
    if not out:
        raise UsageError("--hosts: give at least one name, e.g. localhost,127.0.0.1")
    return out


def make_dev_certs(out_dir: Path, hosts: str) -> dict[str, Path]:
    """Create (or reuse) the CA and issue a server certificate. Returns the file paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = _names(hosts)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {n: out_dir / f"{n}.pem" for n in ("ca", "ca-key", "cert", "key")}
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    no_pass = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8

    if paths["ca"].exists() and paths["ca-key"].exists():
        ca_cert = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
        ca_key = serialization.load_pem_private_key(paths["ca-key"].read_bytes(), password=None)
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "taxiway development CA"),
                             x509.NameAttribute(NameOID.COMMON_NAME, "taxiway dev CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(paths["ca-key"], ca_key.private_bytes(pem, pkcs8, no_pass))
        paths["ca"].write_bytes(ca_cert.public_bytes(pem))

    key = ec.generate_private_key(ec.SECP256R1())
    first = names[0]
    cn = str(first.value)  # type: ignore[attr-defined]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
                       critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write_private(paths["key"], key.private_bytes(pem, pkcs8, no_pass))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    return paths


def tls_table(cert: Path, key: Path) -> str:
    """The `[listen.tls]` table for the new files: a table of its own, so it pastes into a file
    that already has a `[listen]` table (printing `[listen]` again would be a duplicate table)."""
    return f'[listen.tls]\ncert = "{cert}"\nkey = "{key}"'


def run(args: argparse.Namespace) -> int:
    if args.action != "dev":
        raise UsageError(f"unknown action {args.action!r}")
    try:
        paths = make_dev_certs(Path(args.dir), args.hosts)
    except OSError as exc:
        raise UsageError(f"cannot write certificates in {args.dir}: {exc.strerror}") from None
    print(f"wrote {paths['cert']} and {paths['key']} for {args.hosts}, signed by the local CA {paths['ca']}")
    print("\nuse them in your config: in the [listen] table you have (or a new one), add")
    print('  https = "127.0.0.1:8443"')
    print("and append this table to the file:\n")
    print(tls_table(paths["cert"].resolve(), paths["key"].resolve()))
    first = args.hosts.split(",")[0].strip()
    first = "www" + first[1:] if first.startswith("*.") else first   # a name the wildcard covers
    first = f"[{first}]" if ":" in first else first
    print(f"\nthen: curl --cacert {paths['ca']} https://{first}:8443/")
    print("development only: never trust this CA outside your machine, never commit ca-key.pem")
    return 0
