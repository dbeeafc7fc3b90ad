"""Generated certificates: a separate CA and a CA:FALSE leaf that Thunderbird accepts."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from pathlib import Path

from cryptography import x509

from mailstack.config import load
from mailstack.runtime.tls import ensure_tls_files, server_context


def test_generated_ca_and_leaf(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[server]\nhostname = "mail.example.test"\ndomains = ["example.test"]\n'
                 f'data_dir = "{tmp_path / "d"}"\n')
    cfg = load(p, env={})
    files = ensure_tls_files(cfg)
    assert files.ca is not None
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"mail.example.test", "localhost", "example.test"} <= set(
        san.get_values_for_type(x509.DNSName))
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(
        san.get_values_for_type(x509.IPAddress))
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    # a client trusting only ca.pem accepts the server for each name
    ctx = server_context(files)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    client = ssl.create_default_context(cafile=str(files.ca))
    for name in ("localhost", "mail.example.test"):
        a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
        c_a, c_b = ssl.MemoryBIO(), ssl.MemoryBIO()
        srv = ctx.wrap_bio(a, b, server_side=True)
        cli = client.wrap_bio(c_a, c_b, server_hostname=name)
        for _ in range(10):
            for side in (cli, srv):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            a.write(c_b.read())
            c_a.write(b.read())
        assert cli.version() in ("TLSv1.3", "TLSv1.2")
    assert ensure_tls_files(cfg) == files  # idempotent: not regenerated


def test_concurrent_first_start_makes_one_ca(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[server]\ndata_dir = "{tmp_path / "d"}"\n')
    cfg = load(p, env={})
    seen: list[bytes] = []

    def go() -> None:
        files = ensure_tls_files(cfg)
        assert files.ca is not None
        seen.append(files.ca.read_bytes())
    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1
