"""The crypto core of the encrypted data path (issue 14, docs/encryption.md "Keys"): pure, no sockets.

The tunnel process (`dataplane.tunnel`) owns the sockets and the TUN device; for each peer host it keeps
one `Peer` from this module and asks it to `seal` an outgoing packet or to `receive` a datagram. A `Peer`
answers with datagrams to send and packets to deliver, and keeps its counters in `Peer.stats`. Time comes
from an injected clock, so tests drive two `Peer`s against each other with a fake one.

Keys
    static      each host: an X25519 key pair (`StaticKey`), private key in a 0600 file, public key
                published in the host record (`StaticKey.public_b64`).
    pair        pair_key = HKDF-SHA256(ikm=X25519(own, peer), salt=secret_salt(secret),
                                       info=b"pyweave pair v1" | lp(name_lo) | lp(name_hi))
                secret_salt(secret) = SHA-256(b"pyweave secret v1\\0" | secret); lp(n) = u16 length | UTF-8;
                name_lo < name_hi are the two host names sorted. Both sides get the same 32 bytes; without
                the secret a private key does not give it, and without a private key the secret does not.
    session     per handshake, from fresh ephemeral X25519 keys (below): two directional keys.

Messages (integers big-endian; AEAD = AES-256-GCM, chosen by measurement, see docs/encryption.md)
    HANDSHAKE_INIT  0x01 | sender id I u32 | E_i (32) | AEAD(k_init, nonce 0, timestamp u64, ad=header)
                    = 61 bytes; header = the first 37 bytes; timestamp = the initiator's wall clock in ns,
                    strictly increasing; k_init = HKDF(ikm=pair_key, salt=header,
                    info=b"pyweave init v1" | lp(initiator) | lp(responder)).
    HANDSHAKE_RESP  0x02 | sender id R u32 | receiver id I u32 | E_r (32) | AEAD(k_resp, nonce 0, empty,
                    ad=header) = 57 bytes; k_resp = HKDF(ikm=X25519(e_r, E_i) | pair_key,
                    salt=SHA-256(INIT | header), info=b"pyweave resp v1" | lp(responder) | lp(initiator)).
    DATA            0x03 | receiver id u32 | counter u64 | AEAD(k_dir, nonce = 0^4 | counter, packet,
                    ad=the 13-byte header): DATA_OVERHEAD = 29 bytes over the packet.
    Session keys:   k_i2r | k_r2i = HKDF(ikm=X25519(e_i, e_r) | pair_key, salt=SHA-256(INIT | RESP),
                    info=b"pyweave session v1", length 64).

Why this shape
- Every AEAD key above is used with a fixed nonce only once: k_init and k_resp are salted with the
  message's own fresh ephemeral key (a retry makes a new ephemeral), and a session key is used with the
  per-direction counter, which never repeats within the session (a session is retired before 2^60).
- k_init and k_resp name sender and receiver, so an INIT reflected back to its sender does not verify.
  An INIT is verified (HKDF + AEAD, no X25519) before any Diffie-Hellman is done for it.
- Replayed INITs: the responder accepts an INIT only with a timestamp above the last one it accepted
  from that peer. After the responder restarts, an old INIT may be accepted once more; the attacker lacks
  e_i, so the session it makes is never confirmed (below) and never used for sending.
- RESP is bound to the INIT by the transcript hash; the session keys to both messages. Forward secrecy:
  the ephemeral private keys are dropped when the session keys are made, old sessions are dropped after
  a rotation, and a recording plus the secret (or plus a static key) does not give X25519(e_i, e_r).

Sessions and rotation
- Initiator: on a valid RESP its new session is current at once: the queued packets go out sealed (or,
  with none queued, an empty DATA, a keepalive, confirming the session to the responder).
- Responder: on a valid INIT it answers RESP and its new session is usable for receiving; it switches
  its sending to it at the first DATA that opens with it (key confirmation), so a lost RESP or a
  replayed INIT never leaves it sealing with keys its peer does not have. Until then it keeps sealing
  with its current session, or queues when it has none.
- After a rotation the previous session is still accepted for PREVIOUS_SESSION_OVERLAP seconds. If it
  still receives on the previous session, the initiator sends another keepalive on the new one.
- Rekey: after `rekey_after` seconds (the session's responder waits 10 % longer, so that the two sides
  rarely start together) or `rekey_bytes` sealed bytes, a new INIT goes out while the current session
  keeps sealing. A session is refused for sealing and opening after 1.5 x rekey_after (REJECT_AFTER).
- Simultaneous INITs: the host whose name sorts first wins; the other drops its own handshake and
  answers. Retries: a new INIT (fresh ephemeral) every `handshake_retry` s while needed; RESPs to the
  last two INITs are accepted (a slow RESP is not wasted), and the responder keeps its last two waiting
  sessions, so whichever the initiator completes is confirmed. After HANDSHAKE_GIVE_UP s without success
  the queued packets are dropped and counted.
- Restart: a host whose tunnel restarted has lost its sessions, and its peer keeps sealing with one.
  DATA for an unknown session while no session is established makes it start a handshake (rate-limited
  to one INIT per handshake_retry), so traffic resumes after one round trip, not at the peer's rekey.
  The INIT timestamps are wall-clock nanoseconds for this reason: they keep increasing across restarts.
- Receiving: a 8192-packet sliding window per receiving session. The AEAD is checked first, so a DATA
  that does not open is `forged` whatever its counter says; then `replayed` or `too_old` by the window.
  DATA for a session that was retired or has expired counts as `too_old`; for an unknown id, `forged`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TYPE_INIT = 0x01
TYPE_RESP = 0x02
TYPE_DATA = 0x03

KEY_SIZE = 32
TAG_SIZE = 16
_DATA_HEADER = struct.Struct(">BIQ")  # type, receiver id, counter
_INIT_HEADER = struct.Struct(">BI32s")  # type, sender id, E_i
_RESP_HEADER = struct.Struct(">BII32s")  # type, sender id, receiver id, E_r
DATA_OVERHEAD = _DATA_HEADER.size + TAG_SIZE  # 29 bytes added to every packet (outer IPv4+UDP add 28 more)
INIT_SIZE = _INIT_HEADER.size + 8 + TAG_SIZE  # 61
RESP_SIZE = _RESP_HEADER.size + TAG_SIZE  # 57

REPLAY_WINDOW = 8192  # packets; weave's sleeve kept 2^20, WireGuard 8192 - 64
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
REJECT_AFTER_MESSAGES = 1 << 60  # a session seals no more than this (the nonce counter never wraps)
PREVIOUS_SESSION_OVERLAP = 10.0  # seconds the previous session is still accepted after a rotation
HANDSHAKE_GIVE_UP = 90.0  # seconds of failed handshakes after which the queued packets are dropped
_RESPONDER_REKEY_LAG = 1.1  # the session's responder rekeys by time this much later than its initiator
_REJECT_FACTOR = 1.5  # a session is refused after rekey_after x this
_ZERO_NONCE = bytes(12)
_NONCE_PREFIX = bytes(4)


class CryptoError(Exception):
    """A key file or a key is unusable; the message says what to do (permanent)."""


def _lp(name: str) -> bytes:
    raw = name.encode()
    return len(raw).to_bytes(2, "big") + raw


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = KEY_SIZE) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _x25519(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    if len(peer_public) != KEY_SIZE:
        raise CryptoError(f"an X25519 public key is {KEY_SIZE} bytes, not {len(peer_public)}")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as err:  # a low-order point: the shared secret would be all zeros
        raise CryptoError(f"unusable X25519 public key: {err}") from err


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class StaticKey:
    """A host's static X25519 key pair. The private key stays in this object and its file."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = _raw_public(private)

    @classmethod
    def generate(cls) -> StaticKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> StaticKey:
        """The key in `path` (base64 of the 32 raw private bytes, one line), made there if missing.

        The file is created with mode 0600 under a temporary name and linked into place, so a
        concurrent creator or a crash never leaves a partial key; the loser of a race reads the winner's.
        A file readable or writable by group or others, or malformed, is refused (CryptoError).
        """
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        key = cls.generate()
        text = base64.b64encode(key._private_bytes()).decode() + "\n"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return cls._load(path)
            finally:
                os.unlink(tmp)
        except OSError as err:
            raise CryptoError(
                f"cannot write the key file {path}: {err}; check that its directory exists and is writable"
            ) from err
        return key

    @classmethod
    def _load(cls, path: Path) -> StaticKey:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise CryptoError(f"cannot read the key file {path}: {err}") from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CryptoError(f"the key file {path} is not a regular file")
            if st.st_mode & 0o077:
                raise CryptoError(
                    f"the key file {path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                    f"run `chmod 600 {path}` if it was not read by anyone else, otherwise delete it to make a new key"
                )
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise CryptoError(f"the key file {path} is malformed (not base64): delete it to make a new key") from err
        if len(raw) != KEY_SIZE:
            raise CryptoError(f"the key file {path} is malformed ({len(raw)} bytes, not {KEY_SIZE}): delete it to make a new key")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def _private_bytes(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def public_b64(self) -> str:
        """The public key as base64 text, for the host record."""
        return base64.b64encode(self.public).decode()

    def exchange(self, peer_public: bytes) -> bytes:
        """X25519(own private, peer public): 32 bytes. CryptoError for a malformed or low-order key."""
        return _x25519(self._private, peer_public)


def public_from_b64(text: str) -> bytes:
    """A peer's public key from its host record (`StaticKey.public_b64`); CryptoError if malformed."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise CryptoError(f"malformed public key {text!r}: not base64") from err
    if len(raw) != KEY_SIZE:
        raise CryptoError(f"malformed public key {text!r}: {len(raw)} bytes, not {KEY_SIZE}")
    return raw


def secret_salt(secret: bytes) -> bytes:
    """SHA-256 of the cluster secret (domain-separated): the HKDF salt of every pair key."""
    return hashlib.sha256(b"pyweave secret v1\0" + secret).digest()


def pair_key(own: StaticKey, peer_public: bytes, secret: bytes, own_name: str, peer_name: str) -> bytes:
    """The static key of the pair (own, peer): 32 bytes, the same computed on both hosts."""
    lo, hi = sorted((own_name, peer_name))
    return _hkdf(own.exchange(peer_public), secret_salt(secret), b"pyweave pair v1" + _lp(lo) + _lp(hi))


@dataclass
class PeerStats:
    """Counters of one `Peer`. `sealed`/`opened`: data packets (keepalives not counted);
    `handshakes_sent`: INIT and RESP messages sent; `handshakes_received`: valid INIT and RESP messages;
    `forged`: datagrams that do not verify (bad tag, unknown session, malformed);
    `replayed`: DATA already seen in the window, or an INIT not newer than the last accepted;
    `too_old`: DATA behind the window or for an expired or retired session;
    `rekeys`: rotations from one session to the next; `queued_dropped`: packets dropped from the queue."""

    sealed: int = 0
    opened: int = 0
    forged: int = 0
    replayed: int = 0
    too_old: int = 0
    handshakes_sent: int = 0
    handshakes_received: int = 0
    rekeys: int = 0
    queued_dropped: int = 0


class _Session:
    __slots__ = (
        "local_id",
        "remote_id",
        "initiator",
        "created",
        "seal_aead",
        "open_aead",
        "counter",
        "sealed_bytes",
        "top",
        "seen",
    )

    def __init__(self, local_id: int, remote_id: int, initiator: bool, created: float, seal_key: bytes, open_key: bytes) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.initiator = initiator
        self.created = created
        self.seal_aead = AESGCM(seal_key)
        self.open_aead = AESGCM(open_key)
        self.counter = 0
        self.sealed_bytes = 0
        self.top = -1  # the highest counter received
        self.seen = 0  # bit i: counter top - i was received


@dataclass
class _PendingInit:
    local_id: int
    ephemeral: X25519PrivateKey
    datagram: bytes
    sent_at: float


class Peer:
    """The crypto state of this host towards one peer host; not thread-safe (one tunnel loop uses it)."""

    def __init__(
        self,
        *,
        me: str,
        name: str,
        pair_key: bytes,
        clock: Callable[[], float] = time.monotonic,
        rekey_after: float = 120.0,
        rekey_bytes: int = 1 << 30,
        handshake_retry: float = 0.5,
        queue_max: int = 64,
    ) -> None:
        if len(pair_key) != KEY_SIZE:
            raise CryptoError(f"a pair key is {KEY_SIZE} bytes, not {len(pair_key)}")
        if me == name:
            raise CryptoError(f"a peer must be another host than this one ({me})")
        self.me = me
        self.name = name
        self.stats = PeerStats()
        self._pair_key = pair_key
        self._clock = clock
        self._rekey_after = rekey_after
        self._reject_after = rekey_after * _REJECT_FACTOR
        self._rekey_bytes = rekey_bytes
        self._retry = handshake_retry
        self._queue: deque[bytes] = deque()
        self._queue_max = queue_max
        self._wins_ties = me < name
        self._sessions: dict[int, _Session] = {}
        self._current: _Session | None = None
        self._previous: _Session | None = None
        self._previous_until = 0.0
        self._nexts: list[_Session] = []  # responder side, the last two waiting for key confirmation
        self._retired: deque[int] = deque(maxlen=8)
        self._inits: deque[_PendingInit] = deque(maxlen=2)
        self._handshake_started: float | None = None
        self._last_init_ts = 0  # the newest INIT timestamp accepted from the peer
        self._last_sent_ts = 0
        self._last_keepalive = float("-inf")
        self._init_key_out = b"pyweave init v1" + _lp(me) + _lp(name)
        self._init_key_in = b"pyweave init v1" + _lp(name) + _lp(me)
        self._resp_key_out = b"pyweave resp v1" + _lp(me) + _lp(name)
        self._resp_key_in = b"pyweave resp v1" + _lp(name) + _lp(me)

    # -- public ---------------------------------------------------------------------------------

    def set_rekey_after(self, seconds: float) -> None:
        """Rotate by time after `seconds` from now on (the tunnel's config changed); the current
        session's age counts, so an older session rotates at the next tick."""
        if seconds <= 0:
            raise CryptoError(f"rekey_after must be positive, not {seconds}")
        self._rekey_after = seconds
        self._reject_after = seconds * _REJECT_FACTOR

    @property
    def established(self) -> bool:
        """Whether a confirmed, unexpired session seals packets to the peer."""
        return self._usable(self._clock()) is not None

    def seal(self, packet: bytes | memoryview) -> list[bytes]:
        """Datagrams to send for one packet (see the module docstring): DATA, DATA + INIT, INIT or none.
        `packet` may be a view of a buffer the caller reuses: it is copied when it has to wait."""
        now = self._clock()
        session = self._current
        if session is not None and now - session.created < self._reject_after and session.counter < REJECT_AFTER_MESSAGES:
            out = [self._seal_with(session, packet)]
            if self._rekey_due(session, now):
                out += self._initiate(now)
            return out
        if len(self._queue) >= self._queue_max:
            self._queue.popleft()
            self.stats.queued_dropped += 1
        self._queue.append(bytes(packet))
        return self._initiate(now)

    def receive(self, datagram: bytes | memoryview) -> tuple[list[bytes], list[bytes]]:
        """(packets to deliver, datagrams to send back) for one datagram from the peer. Never raises
        for what arrives: a datagram that is not valid is dropped and counted. A DATA may be a view
        (it is opened without a copy); handshakes are small and copied."""
        kind = datagram[0] if len(datagram) else -1
        try:
            if kind == TYPE_DATA:
                return self._receive_data(datagram)
            if kind == TYPE_INIT:
                return [], self._receive_init(bytes(datagram))
            if kind == TYPE_RESP:
                return [], self._receive_resp(bytes(datagram))
        except (InvalidTag, CryptoError):
            pass
        self.stats.forged += 1
        return [], []

    def tick(self) -> list[bytes]:
        """Housekeeping for a periodic timer (every handshake_retry or so): drops expired sessions,
        gives up on long-failed handshakes, returns retried INITs and INITs of rekeys due by time."""
        now = self._clock()
        if self._previous is not None and now >= self._previous_until:
            self._retire(self._previous)
            self._previous = None
        for waiting in [s for s in self._nexts if now - s.created >= self._reject_after]:
            self._retire(waiting)
            self._nexts.remove(waiting)
        if self._current is not None and self._expired(self._current, now):
            self._retire(self._current)
            self._current = None
        if self._handshake_started is not None and now - self._handshake_started >= HANDSHAKE_GIVE_UP:
            self.stats.queued_dropped += len(self._queue)
            self._queue.clear()
            self._inits.clear()
            self._handshake_started = None
        session = self._usable(now)
        if (session is None and self._queue) or (session is not None and self._rekey_due(session, now)):
            return self._initiate(now)
        return []

    # -- sessions -------------------------------------------------------------------------------

    def _expired(self, session: _Session, now: float) -> bool:
        return now - session.created >= self._reject_after or session.counter >= REJECT_AFTER_MESSAGES

    def _usable(self, now: float) -> _Session | None:
        session = self._current
        if session is None or self._expired(session, now):
            return None
        return session

    def _rekey_due(self, session: _Session, now: float) -> bool:
        if session.sealed_bytes >= self._rekey_bytes:
            return True
        after = self._rekey_after if session.initiator else self._rekey_after * _RESPONDER_REKEY_LAG
        return now - session.created >= after

    def _new_id(self) -> int:
        while True:
            local_id = secrets.randbits(32)
            if local_id and local_id not in self._sessions and all(p.local_id != local_id for p in self._inits):
                return local_id

    def _retire(self, session: _Session) -> None:
        if self._sessions.pop(session.local_id, None) is not None:
            self._retired.append(session.local_id)

    def _rotate_to(self, session: _Session, now: float) -> list[bytes]:
        """Make `session` current (the old one becomes previous) and seal the queued packets with it."""
        if self._current is not None:
            if self._previous is not None:
                self._retire(self._previous)
            self._previous = self._current
            self._previous_until = now + PREVIOUS_SESSION_OVERLAP
            self.stats.rekeys += 1
        self._current = session
        self._handshake_started = None
        self._inits.clear()
        out = [self._seal_with(session, packet) for packet in self._queue]
        self._queue.clear()
        return out

    def _seal_with(self, session: _Session, packet: bytes | memoryview) -> bytes:
        counter = session.counter
        session.counter = counter + 1
        header = _DATA_HEADER.pack(TYPE_DATA, session.remote_id, counter)
        if packet:
            session.sealed_bytes += len(packet)
            self.stats.sealed += 1
        return header + session.seal_aead.encrypt(_NONCE_PREFIX + header[5:], packet, header)

    # -- handshake ------------------------------------------------------------------------------

    def _initiate(self, now: float) -> list[bytes]:
        """A new INIT, unless one was sent less than handshake_retry ago or a handshake the peer
        started is waiting for its confirmation."""
        if self._inits and now - self._inits[-1].sent_at < self._retry:
            return []
        if self._nexts and now - self._nexts[-1].created < self._retry:
            return []
        ephemeral = X25519PrivateKey.generate()
        local_id = self._new_id()
        header = _INIT_HEADER.pack(TYPE_INIT, local_id, _raw_public(ephemeral))
        timestamp = max(time.time_ns(), self._last_sent_ts + 1)
        self._last_sent_ts = timestamp
        k_init = _hkdf(self._pair_key, header, self._init_key_out)
        datagram = header + AESGCM(k_init).encrypt(_ZERO_NONCE, timestamp.to_bytes(8, "big"), header)
        self._inits.append(_PendingInit(local_id, ephemeral, datagram, now))
        if self._handshake_started is None:
            self._handshake_started = now
        self.stats.handshakes_sent += 1
        return [datagram]

    def _receive_init(self, datagram: bytes) -> list[bytes]:
        if len(datagram) != INIT_SIZE:
            raise CryptoError("malformed INIT")
        header = datagram[: _INIT_HEADER.size]
        _, peer_id, e_i = _INIT_HEADER.unpack(header)
        k_init = _hkdf(self._pair_key, header, self._init_key_in)
        timestamp = int.from_bytes(AESGCM(k_init).decrypt(_ZERO_NONCE, datagram[_INIT_HEADER.size :], header), "big")
        if timestamp <= self._last_init_ts:
            self.stats.replayed += 1
            return []
        self.stats.handshakes_received += 1
        if self._inits and self._wins_ties:
            return []  # simultaneous initiation: ours wins, the peer will answer it
        now = self._clock()
        ephemeral = X25519PrivateKey.generate()
        dh = _x25519(ephemeral, e_i)
        self._last_init_ts = timestamp
        local_id = self._new_id()
        resp_header = _RESP_HEADER.pack(TYPE_RESP, local_id, peer_id, _raw_public(ephemeral))
        k_resp = _hkdf(dh + self._pair_key, hashlib.sha256(datagram + resp_header).digest(), self._resp_key_out)
        resp = resp_header + AESGCM(k_resp).encrypt(_ZERO_NONCE, b"", resp_header)
        k_i2r, k_r2i = self._session_keys(dh, datagram + resp)
        if len(self._nexts) == 2:  # the initiator retried twice since: it holds the e_i of the last two only
            self._retire(self._nexts.pop(0))
        waiting = _Session(local_id, peer_id, False, now, seal_key=k_r2i, open_key=k_i2r)
        self._nexts.append(waiting)
        self._sessions[local_id] = waiting
        # Ours lost the tie (or we had none): drop it; the queue goes out once the peer confirms.
        self._inits.clear()
        self._handshake_started = None
        self.stats.handshakes_sent += 1
        return [resp]

    def _receive_resp(self, datagram: bytes) -> list[bytes]:
        if len(datagram) != RESP_SIZE:
            raise CryptoError("malformed RESP")
        resp_header = datagram[: _RESP_HEADER.size]
        _, peer_id, our_id, e_r = _RESP_HEADER.unpack(resp_header)
        pending = next((p for p in self._inits if p.local_id == our_id), None)
        if pending is None:
            raise CryptoError("RESP to no INIT of ours")
        dh = _x25519(pending.ephemeral, e_r)
        k_resp = _hkdf(dh + self._pair_key, hashlib.sha256(pending.datagram + resp_header).digest(), self._resp_key_in)
        AESGCM(k_resp).decrypt(_ZERO_NONCE, datagram[_RESP_HEADER.size :], resp_header)
        self.stats.handshakes_received += 1
        k_i2r, k_r2i = self._session_keys(dh, pending.datagram + datagram)
        now = self._clock()
        session = _Session(our_id, peer_id, True, now, seal_key=k_i2r, open_key=k_r2i)
        self._sessions[our_id] = session
        out = self._rotate_to(session, now)
        if not out:  # nothing queued: confirm the session to the responder with a keepalive
            out.append(self._seal_with(session, b""))
            self._last_keepalive = now
        return out

    def _session_keys(self, dh: bytes, transcript: bytes) -> tuple[bytes, bytes]:
        okm = _hkdf(dh + self._pair_key, hashlib.sha256(transcript).digest(), b"pyweave session v1", 2 * KEY_SIZE)
        return okm[:KEY_SIZE], okm[KEY_SIZE:]

    # -- data -----------------------------------------------------------------------------------

    def _receive_data(self, datagram: bytes | memoryview) -> tuple[list[bytes], list[bytes]]:
        if len(datagram) < DATA_OVERHEAD:
            raise CryptoError("short DATA")
        _, local_id, counter = _DATA_HEADER.unpack_from(datagram)
        session = self._sessions.get(local_id)
        if session is None:
            if local_id in self._retired:
                self.stats.too_old += 1
                return [], []
            self.stats.forged += 1
            # We may have restarted and the peer still seals with a session we lost: handshake anew
            # (rate-limited by _initiate) rather than wait for the peer's next rekey.
            return [], ([] if self._usable(self._clock()) is not None else self._initiate(self._clock()))
        now = self._clock()
        if self._expired(session, now) or (session is self._previous and now >= self._previous_until):
            self.stats.too_old += 1
            return [], []
        header = bytes(datagram[: _DATA_HEADER.size])
        packet = session.open_aead.decrypt(_NONCE_PREFIX + header[5:], memoryview(datagram)[_DATA_HEADER.size :], header)
        if counter > session.top:
            ahead = counter - session.top
            session.seen = ((session.seen << ahead) | 1) & _WINDOW_MASK if ahead < REPLAY_WINDOW else 1
            session.top = counter
        else:
            behind = session.top - counter
            if behind >= REPLAY_WINDOW:
                self.stats.too_old += 1
                return [], []
            if (session.seen >> behind) & 1:
                self.stats.replayed += 1
                return [], []
            session.seen |= 1 << behind
        out: list[bytes] = []
        if session in self._nexts:  # key confirmation: the initiator has this session too
            self._nexts.remove(session)
            for other in self._nexts:  # answers to earlier INITs that the initiator gave up on
                self._retire(other)
            self._nexts.clear()
            out = self._rotate_to(session, now)
        elif session is self._previous and self._current is not None and self._current.initiator and self._current.top < 0:
            # The peer still seals with the previous session: our confirmation may have been lost.
            if now - self._last_keepalive >= self._retry:
                out = [self._seal_with(self._current, b"")]
                self._last_keepalive = now
        if not packet:
            return [], out
        self.stats.opened += 1
        return [packet], out
