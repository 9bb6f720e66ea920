"""The CA and server certificate: creation, reuse, renewal, and verification by real TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.tls import TlsError, client_ssl_context, load_or_create_tls
from tests.integration.broker.conftest import BrokerEnv
from tests.support.mqtt import free_port


def _sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in ext}


def test_creates_ca_and_server_files_with_tight_modes(tmp_path: Path) -> None:
    material = load_or_create_tls(tmp_path / "tls", hostnames=["backup.example", "10.1.2.3"])
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in (material.ca_cert, material.ca_key, material.server_cert, material.server_key)
    }
    assert modes["ca.key"] == 0o600
    assert modes["server.key"] == 0o600
    assert material.ca_pem == material.ca_cert.read_bytes()
    assert {"localhost", "127.0.0.1", "::1", "backup.example", "10.1.2.3"} <= _sans(
        material.server_cert
    )
    assert not [p.name for p in material.directory.iterdir() if p.name.startswith(".")]

    ca = x509.load_pem_x509_certificate(material.ca_pem)
    server = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert dt.timedelta(days=729) < lifetime < dt.timedelta(days=731)


def test_reload_keeps_files_and_renews_on_san_change(tmp_path: Path) -> None:
    first = load_or_create_tls(tmp_path, hostnames=["a.example"])
    server_pem = first.server_cert.read_bytes()
    again = load_or_create_tls(tmp_path, hostnames=["A.example."])  # same name, normalised
    assert again == first
    assert first.server_cert.read_bytes() == server_pem

    renewed = load_or_create_tls(tmp_path, hostnames=["b.example"])
    assert renewed.ca_pem == first.ca_pem  # the trust anchor never moves
    assert renewed.server_cert.read_bytes() != server_pem
    assert "b.example" in _sans(renewed.server_cert)
    assert "a.example" not in _sans(renewed.server_cert)


def test_renews_a_server_cert_expiring_within_30_days(tmp_path: Path) -> None:
    material = load_or_create_tls(tmp_path, hostnames=[])
    ca_key = serialization.load_pem_private_key(material.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(material.ca_pem)
    old = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    server_key = serialization.load_pem_private_key(material.server_key.read_bytes(), password=None)
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    # Same key, same SANs, signed by the CA: only the expiry is wrong.
    expiring = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=700))
        .not_valid_after(now + dt.timedelta(days=29))
        .add_extension(
            old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    material.server_cert.write_bytes(expiring.public_bytes(serialization.Encoding.PEM))

    load_or_create_tls(tmp_path, hostnames=[])
    renewed = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
    assert renewed.not_valid_after_utc > now + dt.timedelta(days=700)


def test_reissues_after_a_crash_between_key_and_certificate(tmp_path: Path) -> None:
    """A new server.key next to the old server.pem (crash mid-renewal) is repaired."""
    material = load_or_create_tls(tmp_path, hostnames=[])
    other_key = ec.generate_private_key(ec.SECP256R1())
    material.server_key.write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    load_or_create_tls(tmp_path, hostnames=[])
    context = material.server_ssl_context()  # load_cert_chain checks the pair matches
    assert isinstance(context, ssl.SSLContext)


def test_ca_certificate_without_its_key_is_an_error(tmp_path: Path) -> None:
    material = load_or_create_tls(tmp_path, hostnames=[])
    material.ca_key.unlink()
    with pytest.raises(TlsError, match=r"ca\.key is missing"):
        load_or_create_tls(tmp_path, hostnames=[])


def test_ca_key_without_certificate_starts_a_new_ca(tmp_path: Path) -> None:
    """Key first, certificate second: a crash in between leaves only ca.key; ca.pem was
    never handed out, so a fresh CA (and server certificate) is made."""
    material = load_or_create_tls(tmp_path, hostnames=[])
    material.ca_cert.unlink()
    fresh = load_or_create_tls(tmp_path, hostnames=[])
    assert fresh.ca_pem != material.ca_pem
    server = x509.load_pem_x509_certificate(fresh.server_cert.read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(fresh.ca_pem))


@pytest.mark.parametrize("server_name", ["127.0.0.1", "localhost"])
async def test_broker_certificate_verifies_against_the_ca(
    broker_env: BrokerEnv, server_name: str
) -> None:
    port = broker_env.broker.port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=client_ssl_context(broker_env.tls.ca_pem),
        server_hostname=server_name,
    )
    peer = writer.get_extra_info("peercert")
    assert peer is not None
    writer.close()
    await writer.wait_closed()
    del reader


async def test_broker_certificate_fails_for_another_ca_or_name(
    broker_env: BrokerEnv, tmp_path: Path
) -> None:
    other = load_or_create_tls(tmp_path / "other", hostnames=[])
    for ca_pem, name in ((other.ca_pem, "127.0.0.1"), (broker_env.tls.ca_pem, "evil.example")):
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1",
                broker_env.broker.port,
                ssl=client_ssl_context(ca_pem),
                server_hostname=name,
            )


async def test_server_ssl_context_serves_https_like_clients(tmp_path: Path) -> None:
    """server_ssl_context() works for an asyncio server; clients verify it via the CA."""
    material = load_or_create_tls(tmp_path, hostnames=[])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(
        handle, "127.0.0.1", free_port(), ssl=material.server_ssl_context()
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(material.ca_pem), server_hostname="localhost"
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
