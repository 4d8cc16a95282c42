"""The cluster's certificates (store/tls.py, issue 15 item 1): a CA, member and client certificates,
files with private keys 0600, and a real TLS handshake with them (mutual, as etcd checks it)."""

from __future__ import annotations

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from store import tls


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_ca_signs_member_and_client_certificates():
    ca, ca_key = tls.make_ca()
    cert = x509.load_pem_x509_certificate(ca)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    member, _ = tls.issue(ca, ca_key, "host1", server=True, ips=("198.18.0.1", "127.0.0.1"), dns=("localhost",))
    client, _ = tls.issue(ca, ca_key, "host2", server=False)
    assert tls.signed_by(member, ca) and tls.signed_by(client, ca)
    assert tls.cert_ips(member) == {"198.18.0.1", "127.0.0.1"}
    assert tls.cert_ips(client) == set()
    m = x509.load_pem_x509_certificate(member)
    assert set(m.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    c = x509.load_pem_x509_certificate(client)
    assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "host2"
    other, _ = tls.make_ca()
    assert not tls.signed_by(client, other)


def test_files_in_the_state_directory_keys_0600(tmp_path):
    t = tls.ClusterTls(tmp_path / "tls")
    with pytest.raises(tls.TlsError, match="no cluster CA"):
        t.ensure_client("host1")
    t.create_ca()
    files = t.ensure_client("host1")
    t.ensure_member("host1", "198.18.0.1")
    assert _mode(t.dir) == 0o700
    for key in (t.ca_key, t.client_key, t.member_key):
        assert _mode(key) == 0o600, key
    for cert in (t.ca_cert, t.client_cert, t.member_cert):
        assert _mode(cert) == 0o644, cert
    assert files == tls.TlsFiles(t.ca_cert, t.client_cert, t.client_key)
    assert not [p for p in t.dir.iterdir() if p.name.endswith(".tmp")]
    # Made once: a second call keeps them; a new address makes a new member certificate.
    ca, client, member = t.ca_cert.read_bytes(), t.client_cert.read_bytes(), t.member_cert.read_bytes()
    t.create_ca()
    t.ensure_client("host1")
    t.ensure_member("host1", "198.18.0.1")
    assert (t.ca_cert.read_bytes(), t.client_cert.read_bytes(), t.member_cert.read_bytes()) == (ca, client, member)
    t.ensure_member("host1", "198.18.0.9")
    assert tls.cert_ips(t.member_cert.read_bytes()) == {"198.18.0.9", "127.0.0.1"}


def test_installing_another_ca_drops_certificates_of_the_old_one(tmp_path):
    t = tls.ClusterTls(tmp_path / "tls")
    t.create_ca()
    t.ensure_client("h")
    cert, key = tls.make_ca()
    t.install_ca(cert, key)
    assert not t.client_cert.exists()
    t.ensure_client("h")
    assert tls.signed_by(t.client_cert.read_bytes(), cert)
    other_cert, _ = tls.make_ca()
    with pytest.raises(tls.TlsError, match="does not match"):
        t.install_ca(other_cert, key)


def _handshake(t: tls.ClusterTls, client_ctx: ssl.SSLContext, server_name: str = "127.0.0.1") -> str:
    """A TLS connection from client_ctx to a server with the member certificate that requires a
    client certificate of the CA (etcd's --client-cert-auth); returns the client's CN seen by the server."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(t.member_cert, t.member_key)
    server_ctx.load_verify_locations(t.ca_cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                peer = s.getpeercert()
                seen["cn"] = dict(x[0] for x in peer["subject"])["commonName"]
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            seen["error"] = err

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname()) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_name) as s:
            s.recv(2)
    finally:
        thread.join(5)
        listener.close()
    if "error" in seen:
        raise seen["error"]
    return seen["cn"]


def test_mutual_tls_with_the_files(tmp_path):
    t = tls.ClusterTls(tmp_path / "tls")
    t.create_ca()
    t.ensure_member("host1", "198.18.0.1")
    files = t.ensure_client("host2")
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(files.cert, files.key)
    assert _handshake(t, ctx) == "host2"
    # A client with no certificate is refused by the server; a server of another CA by the client.
    bare = ssl.create_default_context(cafile=str(files.ca))
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(t, bare)
    other = tls.ClusterTls(tmp_path / "other")
    other.create_ca()
    stranger = ssl.create_default_context(cafile=str(other.ca_cert))
    stranger.load_cert_chain(files.cert, files.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(t, stranger)
