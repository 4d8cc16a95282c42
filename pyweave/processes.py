"""The processes of a host: the embedded etcd of a first host, and the agent. Started detached (their
own session, so a Ctrl-C in the user's terminal does not reach them), recorded in pid files of the
host's state directory, stopped with SIGTERM and then SIGKILL (`pyweave.host.stop_process`)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time

from pyweave.host import HostConfig, HostState, stop_process
from pyweave.storetls import embedded_tls, scheme, tls_dir

AGENT_START_TIMEOUT = 30.0


class ProcessError(Exception):
    """A process could not be started; the message says why and what to do."""


def start_embedded_etcd(
    state: HostState, config: HostConfig, address: str, *, initial_cluster: str | None = None,
    force_new_cluster: bool = False,
) -> subprocess.Popen | None:
    """This host's etcd member on its underlay address (and loopback), data in the state dir.

    The first host starts a one-member cluster; a host joining as a learner gives `initial_cluster`
    (`name=peerURL,...`, itself included) and starts with state `existing`. A restart (data dir
    present) needs neither: etcd reads its membership from its WAL. `force_new_cluster`: a member of a
    store that lost its quorum for good starts as a cluster of itself alone, its data kept
    (`pyweave store-recover`, docs/store.md). Starting is serialised by a lock
    file, so the agent's supervisor and a `pyweave launch` never start two; returns the process when
    this call started one (its parent must reap it), None when one was running already."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise ProcessError("the etcd binary is not on PATH; install etcd-server (apt-get install etcd-server) or use --store")
    state.dir.mkdir(parents=True, exist_ok=True)
    with open(state.dir / "etcd.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if state.etcd_pid() is not None:
            return None
        fresh = not (state.etcd_dir / "member").exists()
        s = scheme(config)
        args = [
            etcd,
            "--name", config.name,
            "--data-dir", str(state.etcd_dir),
            "--listen-client-urls", f"{s}://{address}:2379,{s}://127.0.0.1:2379",
            "--advertise-client-urls", f"{s}://{address}:2379",
            "--listen-peer-urls", f"{s}://{address}:2380",
            "--initial-advertise-peer-urls", f"{s}://{address}:2380",
            "--initial-cluster", initial_cluster or f"{config.name}={s}://{address}:2380",
            "--initial-cluster-state", "new" if fresh and initial_cluster is None else "existing",
            "--auto-compaction-mode", "revision",
            "--auto-compaction-retention", "10000",
            "--log-level", "warn",
        ] + _tls_flags(state, config, address)
        if force_new_cluster:
            args.append("--force-new-cluster")
        with open(state.dir / "etcd.log", "ab") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        state.etcd_pid_path.write_text(str(proc.pid))
        return proc


def _tls_flags(state: HostState, config: HostConfig, address: str) -> list[str]:
    """A cluster with a secret: clients and peers over TLS only, each with a certificate of the
    cluster's CA (docs/security.md); the member's certificate is made (or made again for a new
    address) from the CA in the state directory."""
    if not embedded_tls(config):
        return []
    from store.tls import ClusterTls, TlsError

    tls = ClusterTls(tls_dir(state))
    try:
        tls.ensure_member(config.name, address)
    except TlsError as err:
        raise ProcessError(f"the store's member certificate cannot be made: {err}") from err
    ca, cert, key = str(tls.ca_cert), str(tls.member_cert), str(tls.member_key)
    return [
        "--cert-file", cert, "--key-file", key, "--client-cert-auth", "--trusted-ca-file", ca,
        "--peer-cert-file", cert, "--peer-key-file", key, "--peer-client-cert-auth", "--peer-trusted-ca-file", ca,
    ]


def start_agent(state: HostState, *, timeout: float = AGENT_START_TIMEOUT) -> int:
    """Start the agent and wait until it has registered and mirrored the store (its `ready` file
    names its pid). Returns the pid; raises ProcessError with the log's tail if it dies first."""
    ready = state.dir / "ready"
    ready.unlink(missing_ok=True)
    with open(state.log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyweave_cmd.agent"],
            env={**os.environ, "GRPC_VERBOSITY": os.environ.get("GRPC_VERBOSITY", "ERROR")},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip() == str(proc.pid):
            return proc.pid
        if proc.poll() is not None:
            tail = state.log_path.read_text(errors="replace").splitlines()[-5:]
            raise ProcessError("the agent exited during start:\n  " + "\n  ".join(tail))
        time.sleep(0.05)
    # Not left running half-started: the launch that asked for it is failing.
    stop_process(proc.pid, timeout=5.0)
    proc.wait()
    raise ProcessError(f"the agent did not register within {timeout:.0f}s; see {state.log_path}")
