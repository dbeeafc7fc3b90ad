"""TLS material: a configured certificate, or a local CA plus leaf certificate made at first start.

Thunderbird refuses a self-signed certificate that is its own CA (``CA:TRUE``), so we make two:
``ca.pem`` (the CA users trust) and ``cert.pem``/``key.pem`` (``CA:FALSE``, SANs for the
hostname, localhost, 127.0.0.1 and ::1) under ``<data_dir>/tls``. Keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import Config
from .fsutil import atomic_write


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    ca: Path | None  # None when the operator supplied cert/key


def tls_dir(cfg: Config) -> Path:
    return cfg.data_dir / "tls"


def ensure_tls_files(cfg: Config) -> TLSFiles:
    """Return the certificate files, generating a local CA and leaf on first use."""
    if cfg.tls.cert:
        cert, key = Path(cfg.tls.cert), Path(cfg.tls.key)
        for p in (cert, key):
            if not p.is_file():
                raise FileNotFoundError(f"[tls] file {p} does not exist: fix the path in "
                                        f"{cfg.source} or leave cert/key empty to generate one")
        return TLSFiles(cert, key, None)
    d = tls_dir(cfg)
    files = TLSFiles(d / "cert.pem", d / "key.pem", d / "ca.pem")
    if files.cert.exists() and files.key.exists() and files.ca and files.ca.exists():
        return files
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    # daemons started side by side (docker-compose) must not make two different CAs
    with open(d / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (files.cert.exists() and files.key.exists() and files.ca.exists()):
            _generate(cfg, files)
    return files


LOOPBACK_IPS = ("127.0.0.1", "::1")


def certificate_names(cfg: Config) -> list[str]:
    """The DNS names the generated certificate holds (its IP SANs are ``LOOPBACK_IPS``)."""
    return sorted({cfg.server.hostname.lower(), "localhost", *cfg.server.domains})


def _generate(cfg: Config, files: TLSFiles) -> None:
    assert files.ca is not None
    d = files.cert.parent
    names = certificate_names(cfg)
    ca_pem, ca_key_pem, cert_pem, key_pem = generate_ca_and_leaf(names)
    atomic_write(d / "ca-key.pem", ca_key_pem, mode=0o600)
    atomic_write(files.key, key_pem, mode=0o600)
    atomic_write(files.cert, cert_pem + ca_pem, mode=0o644)  # chain: leaf then CA
    atomic_write(files.ca, ca_pem, mode=0o644)  # written last: its presence means "complete"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate_ca_and_leaf(names: list[str]) -> tuple[bytes, bytes, bytes, bytes]:
    """Make (ca_pem, ca_key_pem, leaf_pem, leaf_key_pem) for the given DNS names."""
    now = dt.datetime.now(dt.UTC)
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailstack"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "mailstack local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = _new_key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in LOOPBACK_IPS]
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem), _pem_key(ca_key), leaf.public_bytes(pem), _pem_key(leaf_key)


#: TLS 1.2 suites the servers accept: forward secrecy (ECDHE) and AEAD ciphers only, no CBC
#: (Lucky 13 and padding-oracle class); TLS 1.3 suites are all AEAD and stay OpenSSL's default
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """Server-side context: TLS 1.2 or newer (1.2 with ECDHE+AEAD suites only), no
    compression, no renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def client_context(cafile: str | os.PathLike[str] | None) -> ssl.SSLContext:
    """Client context trusting ``cafile`` (or the system store when None)."""
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
