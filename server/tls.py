"""TLS material of the server: a private CA and the server certificate it signs.

:func:`load_or_create_tls` keeps four files in one directory:

* ``ca.key`` (0600) and ``ca.pem``: an EC P-256 CA valid for 10 years. ``ca.pem`` is the
  trust anchor handed to agents (``TlsMaterial.ca_pem``); it is never replaced silently.
* ``server.key`` (0600) and ``server.pem``: an EC P-256 leaf for the broker and the HTTPS
  API, valid for 2 years, with SANs ``localhost``, ``127.0.0.1``, ``::1``,
  ``socket.gethostname()`` and the caller's ``hostnames``. It is re-issued when it expires
  within 30 days, when its SAN set differs from the wanted one, when it was not signed by
  the current CA, or when it does not match ``server.key``.

Write order and crash safety: every file is written to a temporary file in the same
directory, fsynced, renamed over its final name, then the directory is fsynced. The key is
always written before its certificate, so ``ca.pem`` present implies ``ca.key`` present.
A crash may leave a key without a certificate (the pair is then created again) or a new
server key next to the old certificate (detected as a mismatch, so the pair is re-issued).
``ca.pem`` without ``ca.key`` is an error, not a reason to mint a new CA: agents already
trust the old one.

Everything here is blocking (key generation, fsync): call it before the event loop starts
or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_LIFETIME",
    "RENEW_BEFORE",
    "SERVER_LIFETIME",
    "TlsError",
    "TlsMaterial",
    "client_ssl_context",
    "load_or_create_tls",
    "wanted_sans",
    "write_file_atomic",
]

log = structlog.get_logger()

CA_LIFETIME: Final = dt.timedelta(days=3650)
SERVER_LIFETIME: Final = dt.timedelta(days=730)
RENEW_BEFORE: Final = dt.timedelta(days=30)
# Certificates start slightly in the past so a peer whose clock lags a little accepts them.
_BACKDATE: Final = dt.timedelta(minutes=5)

_CA_CERT: Final = "ca.pem"
_CA_KEY: Final = "ca.key"
_SERVER_CERT: Final = "server.pem"
_SERVER_KEY: Final = "server.key"

_San: TypeAlias = x509.DNSName | x509.IPAddress


class TlsError(Exception):
    """The TLS directory holds material that cannot be used or repaired automatically."""


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the CA and server files, and the CA certificate agents must trust."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    ca_pem: bytes

    def server_ssl_context(self) -> ssl.SSLContext:
        """A server-side context (aiohttp, asyncio servers) presenting the server certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_cert, self.server_key)
        return context


def client_ssl_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only the CA in ``ca_pem`` and checks the host name."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def wanted_sans(hostnames: Sequence[str]) -> frozenset[_San]:
    """The SAN set a server certificate must carry for ``hostnames`` (plus the defaults)."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *hostnames]
    sans: set[_San] = set()
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        try:
            sans.add(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.add(x509.DNSName(name.lower().rstrip(".")))
    return frozenset(sans)


def load_or_create_tls(directory: Path, *, hostnames: Sequence[str] = ()) -> TlsMaterial:
    """Load the CA and server certificate from ``directory``, creating or renewing as needed.

    Raises :class:`TlsError` when ``ca.pem`` exists without ``ca.key`` or a file cannot be
    parsed (the operator has to look: replacing a CA breaks every agent's trust).
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _load_or_create_ca(directory, now)
    _ensure_server_cert(directory, ca_key, ca_cert, wanted_sans(hostnames), now)
    return TlsMaterial(
        directory=directory,
        ca_cert=directory / _CA_CERT,
        ca_key=directory / _CA_KEY,
        server_cert=directory / _SERVER_CERT,
        server_key=directory / _SERVER_KEY,
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
    )


# --------------------------------------------------------------------------- CA


def _load_or_create_ca(
    directory: Path, now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert_path, key_path = directory / _CA_CERT, directory / _CA_KEY
    if cert_path.exists():
        if not key_path.exists():
            raise TlsError(
                f"CA certificate {cert_path} exists but its key {key_path} is missing; "
                "restore the key, or delete both files to create a new CA "
                "(agents will then need the new ca.pem)"
            )
        key = _read_key(key_path)
        cert = _read_cert(cert_path)
        if not _same_key(cert, key):
            raise TlsError(f"CA certificate {cert_path} does not match its key {key_path}")
        if cert.not_valid_after_utc - now < RENEW_BEFORE:
            # Not renewed automatically: a new CA means re-enrolling every agent.
            log.warning(
                "tls_ca_expiring", path=str(cert_path), not_after=str(cert.not_valid_after_utc)
            )
        return key, cert

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stockade"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Stockade CA {socket.gethostname()}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: ca.pem must never exist without the key that signs with it.
    write_file_atomic(key_path, _key_pem(key), mode=0o600)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("tls_ca_created", path=str(cert_path), not_after=str(cert.not_valid_after_utc))
    return key, cert


# --------------------------------------------------------------------------- server


def _ensure_server_cert(
    directory: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: frozenset[_San],
    now: dt.datetime,
) -> None:
    cert_path, key_path = directory / _SERVER_CERT, directory / _SERVER_KEY
    reason = _server_renew_reason(cert_path, key_path, ca_cert, sans, now)
    if reason is None:
        return

    key = ec.generate_private_key(ec.SECP256R1())
    ordered = sorted(sans, key=lambda san: (isinstance(san, x509.IPAddress), str(san.value)))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stockade"),
                    x509.NameAttribute(NameOID.COMMON_NAME, socket.gethostname()[:64]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(ordered), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    # Key first; a crash in between leaves a mismatching pair, re-issued on the next load.
    write_file_atomic(key_path, _key_pem(key), mode=0o600)
    write_file_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info(
        "tls_server_cert_issued",
        path=str(cert_path),
        reason=reason,
        sans=[str(san.value) for san in ordered],
        not_after=str(cert.not_valid_after_utc),
    )


def _server_renew_reason(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    sans: frozenset[_San],
    now: dt.datetime,
) -> str | None:
    """Why the server pair must be (re-)issued, or None when it is fine as it is."""
    if not cert_path.exists() or not key_path.exists():
        return "missing"
    try:
        cert = _read_cert(cert_path)
        key = _read_key(key_path)
    except TlsError as err:
        log.warning("tls_server_cert_unreadable", path=str(cert_path), error=str(err))
        return "unreadable"
    if not _same_key(cert, key):
        return "key_mismatch"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "other_ca"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return "expiring"
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "sans_changed"
    if frozenset(present) != sans:
        return "sans_changed"
    return None


# --------------------------------------------------------------------------- files


def _same_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as err:
        raise TlsError(f"cannot read certificate {path}: {err}") from err


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise TlsError(f"cannot read private key {path}: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(f"private key {path} is not an EC key")
    return key


def write_file_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data``: temp file (created 0600) + fsync + rename + dir fsync.

    Also used by :mod:`server.broker` for the password and ACL files. Blocking.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; widen only for public files, before any byte is written.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
