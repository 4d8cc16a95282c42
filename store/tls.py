"""The cluster's certificates for etcd over TLS (issue 15, item 1; docs/security.md).

A cluster with a secret (`launch --password`) runs its embedded etcd over TLS only, with client
certificates: every client (agent, CLI, etcdctl) shows a certificate signed by the cluster's CA, and so
does every etcd member to its peers. The first host makes the CA; a joining host gets the CA's
certificate and key by enrolling with the secret (`pyweave.enrol`), then signs its own certificates.
(Whoever knows the secret can enrol and so obtain any certificate: holding the CA key gives a host
nothing that its secret did not give it already, and lets it sign the member certificate it needs
when the store grows onto it, whichever host it joined through.)

The files live in `tls/` of the host's state directory, the private keys mode 0600 (written under a
temporary name and renamed into place, so that no reader ever sees a key with wider permissions or
half written):

    tls/ca.crt      the cluster's CA certificate (every client and member trusts it, and only it)
    tls/ca.key      its private key
    tls/client.crt  this host's client certificate (agent, CLI, etcdctl): CN = the host's name
    tls/client.key
    tls/member.crt  this host's etcd member certificate, server and peer (SANs: the underlay address,
    tls/member.key  127.0.0.1, localhost)

Keys are ECDSA P-256 (small, fast, and what etcd's Go TLS handles best); signatures SHA-256. Nothing
here imports pyweave: the store's clients (`store.etcd`, `store.http`) take `TlsFiles`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from store.raw import TlsFiles

__all__ = ["ClusterTls", "TlsError", "TlsFiles", "cert_ips", "fingerprint", "issue", "make_ca", "signed_by", "write_private"]

CA_DAYS = 3650
LEAF_DAYS = 3650  # no rotation yet (docs/security.md): a leaf lives as long as the CA
ORGANISATION = "pyweave"


class TlsError(Exception):
    """A certificate file is missing, unreadable or not what it should be; the message says which."""


# -- pure: make and sign ---------------------------------------------------------------------
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(cluster: str = "pyweave cluster CA") -> tuple[bytes, bytes]:
    """A new self-signed CA: (certificate PEM, private key PEM)."""
    key = _key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cluster))
        .issuer_name(_name(cluster))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(
    ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str, *, server: bool, client: bool = True,
    ips: tuple[str, ...] = (), dns: tuple[str, ...] = (),
) -> tuple[bytes, bytes]:
    """A new key and a certificate for it signed by the CA: (certificate PEM, private key PEM).
    `server`: usable as a TLS server (etcd's client and peer ports; give the SANs), `client`: as a
    TLS client (the agent, the CLI, and an etcd member towards its peers)."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except ValueError as err:
        raise TlsError(f"the CA certificate or key cannot be read ({err})") from err
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TlsError("the CA key is not an ECDSA key")
    key = _key()
    now = _now()
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(name) for name in dns]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def cert_ips(cert_pem: bytes) -> set[str]:
    """The IP addresses a certificate names (its SANs)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def signed_by(cert_pem: bytes, ca_cert_pem: bytes) -> bool:
    """Whether the certificate was issued by this CA (its signature checks with the CA's key)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate (DER), hex: how a CA is named in messages and docs."""
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


# -- files --------------------------------------------------------------------------------------
def write_private(path: Path, data: bytes) -> None:
    """Write a private file: mode 0600 from its creation, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


class ClusterTls:
    """The certificate files of one host (`tls/` in its state directory)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.client_cert = directory / "client.crt"
        self.client_key = directory / "client.key"
        self.member_cert = directory / "member.crt"
        self.member_key = directory / "member.key"

    def has_ca(self) -> bool:
        return self.ca_cert.exists() and self.ca_key.exists()

    def create_ca(self) -> None:
        """The cluster's CA (its first host); an existing one is kept."""
        if self.has_ca():
            return
        cert, key = make_ca()
        self.install_ca(cert, key)

    def install_ca(self, cert_pem: bytes, key_pem: bytes) -> None:
        """The CA as enrolment delivered it; certificates of another CA left here are dropped."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError as err:
            raise TlsError(f"the cluster's CA cannot be read ({err})") from err
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise TlsError("the cluster's CA key does not match its certificate")
        if self.ca_cert.exists() and self.ca_cert.read_bytes() != cert_pem:
            for path in (self.client_cert, self.client_key, self.member_cert, self.member_key):
                path.unlink(missing_ok=True)
        write_private(self.ca_key, key_pem)
        _write_public(self.ca_cert, cert_pem)

    def _ca(self) -> tuple[bytes, bytes]:
        if not self.has_ca():
            raise TlsError(f"{self.dir} holds no cluster CA; launch with the cluster's --password to enrol")
        return self.ca_cert.read_bytes(), self.ca_key.read_bytes()

    def _current(self, cert: Path, key: Path, ca_pem: bytes) -> bytes | None:
        try:
            pem = cert.read_bytes()
            key.stat()
            return pem if signed_by(pem, ca_pem) else None
        except (OSError, ValueError):
            return None

    def ensure_client(self, name: str) -> TlsFiles:
        """This host's client certificate (CN = name), made once."""
        ca_pem, ca_key = self._ca()
        if self._current(self.client_cert, self.client_key, ca_pem) is None:
            cert, key = issue(ca_pem, ca_key, name, server=False, client=True)
            write_private(self.client_key, key)
            _write_public(self.client_cert, cert)
        return self.client_files()

    def ensure_member(self, name: str, address: str) -> None:
        """This host's etcd member certificate (server and peer) for `address`; made again when the
        address changed (an old one would fail every peer's check of the SAN)."""
        ca_pem, ca_key = self._ca()
        pem = self._current(self.member_cert, self.member_key, ca_pem)
        if pem is not None and address in cert_ips(pem):
            return
        ips = tuple(dict.fromkeys((address, "127.0.0.1")))
        cert, key = issue(ca_pem, ca_key, name, server=True, client=True, ips=ips, dns=("localhost",))
        write_private(self.member_key, key)
        _write_public(self.member_cert, cert)

    def client_files(self) -> TlsFiles:
        return TlsFiles(self.ca_cert, self.client_cert, self.client_key)
