"""Enrolment by the cluster's secret (issue 15, item 1; docs/security.md has the why).

A host launched with `--password` into a cluster whose store runs over TLS needs the cluster's CA.
It asks a launched host's agent for it, on the join endpoint (TCP 6785, `pyweave.join`), in two
requests; both sides prove they know the secret, and neither proof lets a passive observer check a
guess of it:

    joiner -> agent   POST /pyweave/v1/enrol/hello   {"version": 1, "e": E_c}
    agent  -> joiner  {"session": S, "e": E_s}
    joiner -> agent   POST /pyweave/v1/enrol/finish  {"session": S, "request": R, "proof": P_c}
    agent  -> joiner  {"proof": P_s, "sealed": C}            (or 403: the proof is wrong)

    E_c, E_s     fresh ephemeral X25519 public keys (32 bytes each, base64 on the wire)
    th           SHA-256("pyweave enrol v1" | E_c | E_s)
    k_c|k_s|k_e  HKDF-SHA256(ikm = X25519(e, E'), salt = SHA-256("pyweave enrol secret v1\\0" | secret),
                             info = "pyweave enrol keys v1" | th, 96 bytes)
    P_c          HMAC-SHA256(k_c, "client proof" | th | R)       R: the request (JSON: the joiner's name)
    P_s          HMAC-SHA256(k_s, "server proof" | th | P_c)
    C            AES-256-GCM(k_e, nonce 0 (the key is used once), the bundle (JSON), ad = th | P_c)

The joiner proves first: an agent answers only a joiner that knows the secret, so whoever can merely
reach port 6785 gets nothing to test guesses against (a failed proof is answered after a pause, one
at a time: about one online guess per second). The agent's proof and the AEAD show the joiner that it
talks to the cluster. A passive observer sees E_c, E_s, P_c, P_s and C: each is keyed by the X25519
output, which it cannot compute, so it cannot check a guess offline. Not a PAKE: an active attacker
that impersonates the agent (the joiner connects to it) gets P_c and its own DH output, and so can
check guesses offline; a strong secret (`--password-file` with 32 random bytes) is then the defence.

The functions and classes here are pure (no sockets) except `enrol` (the joiner's two requests)
and `Enroller` (the agent's side, which `pyweave.join` calls).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("pyweave.enrol")

VERSION = 1
HELLO_PATH = "/pyweave/v1/enrol/hello"
FINISH_PATH = "/pyweave/v1/enrol/finish"
LABEL = b"pyweave enrol v1"
NONCE = bytes(12)
PENDING_MAX = 64  # handshakes an agent keeps between hello and finish
PENDING_TTL = 10.0  # seconds a hello stays good for
FAIL_PAUSE = 1.0  # seconds before a wrong proof is answered, one at a time


class EnrolError(Exception):
    """Enrolment failed; the message says why."""


class EnrolRefused(EnrolError):
    """The agent refused the joiner's proof: the joiner's secret is not the cluster's."""


def secret_salt(secret: bytes) -> bytes:
    return hashlib.sha256(b"pyweave enrol secret v1\0" + secret).digest()


def transcript_hash(client_hello: bytes, server_hello: bytes) -> bytes:
    return hashlib.sha256(LABEL + client_hello + server_hello).digest()


def derive(dh: bytes, secret: bytes, th: bytes) -> tuple[bytes, bytes, bytes]:
    """(k_c, k_s, k_e) from the X25519 output, the secret and the transcript hash."""
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=secret_salt(secret), info=b"pyweave enrol keys v1" + th).derive(dh)
    return okm[:32], okm[32:64], okm[64:]


def client_proof(k_c: bytes, th: bytes, request: bytes) -> bytes:
    return hmac.new(k_c, b"client proof" + th + request, hashlib.sha256).digest()


def server_proof(k_s: bytes, th: bytes, proof_c: bytes) -> bytes:
    return hmac.new(k_s, b"server proof" + th + proof_c, hashlib.sha256).digest()


def _public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _exchange(key: X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError as err:  # not 32 bytes, or a low-order point (an all-zero output)
        raise EnrolError(f"the peer's key cannot be used ({err})") from err


class ClientHandshake:
    """The joiner's side: `hello` to send, `prove` once the agent's hello came, `open` its reply."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._e: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.hello = _public(self._e)
        self._keys: tuple[bytes, bytes, bytes] | None = None
        self._th = b""
        self._proof = b""

    def prove(self, server_hello: bytes, request: bytes) -> bytes:
        if self._e is None:
            raise EnrolError("this handshake has been used")
        dh = _exchange(self._e, server_hello)
        self._e = None  # the ephemeral key is used once
        self._th = transcript_hash(self.hello, server_hello)
        self._keys = derive(dh, self._secret, self._th)
        self._proof = client_proof(self._keys[0], self._th, request)
        return self._proof

    def open(self, proof_s: bytes, sealed: bytes) -> bytes:
        """The bundle, once the agent's proof checks (else EnrolError: it does not know the secret)."""
        if self._keys is None:
            raise EnrolError("prove first")
        _, k_s, k_e = self._keys
        if not hmac.compare_digest(proof_s, server_proof(k_s, self._th, self._proof)):
            raise EnrolError("the peer does not know the cluster's secret (its proof is wrong): not the cluster, or another secret")
        try:
            return AESGCM(k_e).decrypt(NONCE, sealed, self._th + self._proof)
        except InvalidTag as err:
            raise EnrolError("the peer's sealed reply does not open") from err


class ServerHandshake:
    """The agent's side of one enrolment: its `hello`, then `check` the joiner's proof, `seal` the bundle."""

    def __init__(self, secret: bytes, client_hello: bytes) -> None:
        e = X25519PrivateKey.generate()
        self.hello = _public(e)
        dh = _exchange(e, client_hello)  # the ephemeral private key goes with this frame
        self._th = transcript_hash(client_hello, self.hello)
        self._keys = derive(dh, secret, self._th)
        self._proof_c: bytes | None = None

    def check(self, proof_c: bytes, request: bytes) -> bool:
        ok = hmac.compare_digest(proof_c, client_proof(self._keys[0], self._th, request))
        if ok:
            self._proof_c = proof_c
        return ok

    def seal(self, bundle: bytes) -> tuple[bytes, bytes]:
        """(P_s, C); only after a good `check`."""
        if self._proof_c is None:
            raise EnrolError("the joiner's proof was not checked")
        _, k_s, k_e = self._keys
        return server_proof(k_s, self._th, self._proof_c), AESGCM(k_e).encrypt(NONCE, bundle, self._th + self._proof_c)


# -- the agent's side on the join endpoint -------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnrolError(f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as err:
        raise EnrolError(f"{what} is not base64") from err


class Enroller:
    """Answers enrolments on the join endpoint: `bundle(name)` gives what an enrolled host gets (the
    cluster's CA, as JSON-able dict). Thread-safe; bounded state (PENDING_MAX hellos, PENDING_TTL s)."""

    def __init__(self, secret: bytes, bundle: Callable[[str], dict]) -> None:
        self._secret = secret
        self._bundle = bundle
        self._pending: dict[str, tuple[float, ServerHandshake]] = {}
        self._lock = threading.Lock()
        self._fail_lock = threading.Lock()

    def hello(self, body: dict) -> dict:
        if body.get("version") != VERSION:
            raise EnrolError(f"enrolment version {body.get('version')!r} is not {VERSION}")
        client = _unb64(body.get("e"), "e")
        hs = ServerHandshake(self._secret, client)
        session = secrets.token_urlsafe(16)
        now = time.monotonic()
        with self._lock:
            for key, (since, _) in list(self._pending.items()):
                if now - since > PENDING_TTL:
                    del self._pending[key]
            if len(self._pending) >= PENDING_MAX:
                raise EnrolError("too many enrolments at once; try again")
            self._pending[session] = (now, hs)
        return {"session": session, "e": _b64(hs.hello)}

    def finish(self, body: dict) -> dict:
        """The sealed bundle; EnrolRefused for a wrong proof (after FAIL_PAUSE), EnrolError else."""
        with self._lock:
            entry = self._pending.pop(str(body.get("session")), None)
        if entry is None or time.monotonic() - entry[0] > PENDING_TTL:
            raise EnrolError("no such enrolment (expired?); start again")
        request = _unb64(body.get("request"), "request")
        proof = _unb64(body.get("proof"), "proof")
        hs = entry[1]
        if not hs.check(proof, request):
            with self._fail_lock:  # one wrong guess at a time, each answered after a pause
                time.sleep(FAIL_PAUSE)
            raise EnrolRefused("wrong proof: the joiner's secret is not the cluster's")
        try:
            name = str(json.loads(request).get("name", ""))
        except (ValueError, AttributeError):
            name = ""
        proof_s, sealed = hs.seal(json.dumps(self._bundle(name)).encode())
        log.info("enrolled host=%s", name or "?")
        return {"proof": _b64(proof_s), "sealed": _b64(sealed)}


# -- the joiner's side -----------------------------------------------------------------------------
def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read(1 << 20)
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        data = {}
    return resp.status, data if isinstance(data, dict) else {}


def enrol(host: str, secret: bytes, name: str, *, port: int, timeout: float = 5.0) -> dict:
    """Enrol with the agent at host:port: the bundle it sends (the cluster's CA). EnrolRefused when it
    refuses this secret; EnrolError when it does not prove the secret, or cannot be asked."""
    hs = ClientHandshake(secret)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        status, reply = _post(conn, HELLO_PATH, {"version": VERSION, "e": _b64(hs.hello)})
        if status == 404:
            raise EnrolError(f"{host}:{port} does not enrol hosts (its cluster has no secret, or its agent is of an older version)")
        if status != 200:
            raise EnrolError(f"{host}:{port} refused the enrolment: {reply.get('error', status)}")
        request = json.dumps({"name": name}).encode()
        proof = hs.prove(_unb64(reply.get("e"), f"{host}'s key"), request)
        status, reply = _post(conn, FINISH_PATH, {"session": reply.get("session"), "request": _b64(request), "proof": _b64(proof)})
        if status == 403:
            raise EnrolRefused(f"{host}:{port} refused this host's proof: the secret is not the cluster's; launch with the cluster's --password")
        if status != 200:
            raise EnrolError(f"{host}:{port} refused the enrolment: {reply.get('error', status)}")
        raw = hs.open(_unb64(reply.get("proof"), f"{host}'s proof"), _unb64(reply.get("sealed"), f"{host}'s reply"))
    except (OSError, http.client.HTTPException) as err:
        raise EnrolError(f"{host}:{port} cannot be asked to enrol this host ({err})") from err
    finally:
        conn.close()
    try:
        bundle = json.loads(raw)
    except ValueError as err:
        raise EnrolError(f"{host}:{port} sent a bundle that cannot be read ({err})") from err
    if not isinstance(bundle, dict):
        raise EnrolError(f"{host}:{port} sent a bundle that is no object")
    return bundle
