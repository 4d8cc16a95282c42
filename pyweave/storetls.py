"""Which certificate files this host's store clients and etcd member use (docs/security.md).

- A store of the user's own over TLS (`launch --store https://... --store-ca/--store-cert/--store-key`):
  the files given, saved in the host's configuration.
- The embedded store of a cluster with a secret: TLS only, with the cluster's CA (`store.tls`, files in
  `tls/` of the state directory: made by the first host, delivered to the others by enrolment).
- Otherwise none: plain HTTP, as without a secret before.

Paths only here (no `cryptography` import): the CLI calls `client_tls` for every command.
"""

from __future__ import annotations

from pathlib import Path

from pyweave.host import HostConfig, HostState
from store.raw import TlsFiles


def tls_dir(state: HostState) -> Path:
    return state.dir / "tls"


def embedded_tls(config: HostConfig) -> bool:
    """The embedded store runs over TLS: the cluster has a secret."""
    return bool(config.encrypted)


def scheme(config: HostConfig) -> str:
    return "https" if embedded_tls(config) else "http"


def client_tls(state: HostState, config: HostConfig | None) -> TlsFiles | None:
    """The files of this host's store clients (agent, CLI), or None for plain HTTP."""
    if config is None:
        return None
    if config.store_ca or config.store_cert:
        return TlsFiles(Path(config.store_ca or ""), Path(config.store_cert or ""), Path(config.store_key or ""))
    if embedded_tls(config):
        d = tls_dir(state)
        return TlsFiles(d / "ca.crt", d / "client.crt", d / "client.key")
    return None


def use_for_this_process(state: HostState, config: HostConfig | None) -> TlsFiles | None:
    """Make the host's files the default of every store client of this process (`store.raw.use_tls`)."""
    from store.raw import use_tls

    files = client_tls(state, config)
    use_tls(files)
    return files


class StoreTlsError(Exception):
    """The store's certificates cannot be had; the message says why and what to do."""


def prepare(state: HostState, name: str, secret: bytes | None, endpoints: list[str], *, peer_host: str | None,
            embedded: bool) -> None:
    """Before a launch starts anything: a first host with a secret makes the cluster's CA; a host
    joining a store over TLS through a launched host enrols with the secret to get it (a wrong secret
    is refused: StoreTlsError); then this host's client certificate. Nothing for a plain store."""
    tls_store = any(e.lower().startswith("https://") for e in endpoints)
    if not tls_store or not embedded and peer_host is None:
        return
    from store.tls import ClusterTls, TlsError

    tls = ClusterTls(tls_dir(state))
    if secret is None:
        if tls.has_ca():
            tls.ensure_client(name)
            return
        raise StoreTlsError("the cluster is encrypted (its store runs over TLS): launch with the cluster's "
                            "secret (--password, $PYWEAVE_PASSWORD or --password-file)")
    try:
        if peer_host is None:
            tls.create_ca()
        else:
            from pyweave import enrol
            from pyweave.join import JOIN_PORT

            try:
                bundle = enrol.enrol(peer_host, secret, name, port=JOIN_PORT)
            except enrol.EnrolError as err:
                raise StoreTlsError(f"enrolment with {peer_host} failed: {err}") from err
            try:
                tls.install_ca(str(bundle["ca_cert"]).encode(), str(bundle["ca_key"]).encode())
            except KeyError as err:
                raise StoreTlsError(f"{peer_host} enrolled this host but sent no CA") from err
        tls.ensure_client(name)
    except TlsError as err:
        raise StoreTlsError(str(err)) from err
