"""Keys: one master secret per owner, one derived key per (dataset, licensee).

Why HMAC derivation: the owner backs up a single 32-byte secret and can re-create every
licensee's key from the registry's public ids, while a leaked licensee key tells nothing about
the master or other licensees' keys. A key seeds everything secret about a copy (which samples
are marked, the trigger phrase, the pattern or message) through separate HMAC *domains*, so the
parts are independent of each other.

Keys never enter an issued copy or the registry; the registry stores only :attr:`Key.key_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracemark.errors import TracemarkError

MASTER_KEY_BYTES = 32
_DERIVE_DOMAIN = b"tracemark/v1/licensee-key"


@dataclass(frozen=True)
class Key:
    """A secret watermark key (32 bytes) with a public, non-reversible id."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != MASTER_KEY_BYTES:
            raise TracemarkError(f"a key must be {MASTER_KEY_BYTES} bytes, got {len(self.secret)}")

    def __repr__(self) -> str:  # never print the secret by accident
        return f"Key(id={self.key_id})"

    @property
    def key_id(self) -> str:
        """Public identifier stored in the registry (SHA-256 of a domain tag + secret)."""
        return hashlib.sha256(b"tracemark/v1/key-id|" + self.secret).hexdigest()[:16]

    def prf(self, domain: str, message: str | bytes = b"") -> bytes:
        """Keyed pseudo-random function: HMAC-SHA256(secret, domain | message)."""
        if isinstance(message, str):
            message = message.encode("utf-8")
        return hmac.new(self.secret, domain.encode() + b"|" + message, hashlib.sha256).digest()

    def seed(self, domain: str, message: str | bytes = b"") -> int:
        """A 128-bit integer seed for numpy generators, independent per domain."""
        return int.from_bytes(self.prf(domain, message)[:16], "big")

    def rng(self, domain: str, message: str | bytes = b"") -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(self.seed(domain, message)))

    def stream(self, domain: str, nbytes: int) -> bytes:
        """``nbytes`` keyed pseudo-random bytes (SHAKE-256 of a domain tag and the secret).

        One hash call per key, so key vectors for 100,000 keys are generated in well under a
        second (a numpy Generator per key costs ~50x more).
        """
        return hashlib.shake_256(b"tracemark/v1/stream|" + domain.encode() + b"|" + self.secret).digest(nbytes)

    def uniform(self, domain: str, message: str | bytes) -> float:
        """A keyed uniform number in [0, 1) for one message (e.g. one sample id)."""
        return int.from_bytes(self.prf(domain, message)[:8], "big") / 2.0**64


def sign_matrix(keys: "list[Key]", domain: str, n: int) -> np.ndarray:
    """(len(keys), n) matrix of keyed signs in {-1, +1} from :meth:`Key.stream` (vectorised)."""
    nbytes = (n + 7) // 8
    raw = np.frombuffer(b"".join(k.stream(domain, nbytes) for k in keys), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(keys), nbytes), axis=1)[:, :n]
    return bits.astype(np.float64) * 2.0 - 1.0


def random_key() -> Key:
    """A fresh random key: used for decoy keys that were never issued."""
    return Key(secrets.token_bytes(MASTER_KEY_BYTES))


def decoy_keys(n: int, seed: int | str = 0) -> list[Key]:
    """``n`` reproducible decoy keys (never issued) for calibrating a null distribution."""
    base = hashlib.sha256(f"tracemark/v1/decoy|{seed}".encode()).digest()
    return [Key(hmac.new(base, i.to_bytes(8, "big"), hashlib.sha256).digest()) for i in range(n)]


def derive_key(master: bytes, dataset_id: str, licensee_id: str) -> Key:
    """Per-licensee key = HMAC(master, dataset_id | licensee_id) (length-prefixed, unambiguous)."""
    if len(master) != MASTER_KEY_BYTES:
        raise TracemarkError("the master key must be 32 bytes")
    msg = b"".join(
        len(part).to_bytes(4, "big") + part
        for part in (_DERIVE_DOMAIN, dataset_id.encode("utf-8"), licensee_id.encode("utf-8"))
    )
    return Key(hmac.new(master, msg, hashlib.sha256).digest())


def create_master_key(path: Path) -> bytes:
    """Write a new random master key with mode 0600; refuse to overwrite an existing one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(MASTER_KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise TracemarkError(f"{path}: a master key already exists; refusing to overwrite it") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
    os.chmod(path, 0o600)
    return secret


def load_master_key(path: Path) -> bytes:
    """Read the master key, checking it exists, is well formed and is private."""
    path = Path(path)
    if not path.exists():
        if (path.parent / "registry.sqlite").exists():  # e.g. a registry restored into a fresh home
            raise TracemarkError(f"{path}: the master key is missing beside its registry; put your copy of "
                                 "master.key back here (mode 0600): every licensee key derives from it")
        raise TracemarkError(f"{path}: no master key; run `tracemark init` first")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise TracemarkError(f"{path}: master key is readable by others (mode {mode:o}); run chmod 600")
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise TracemarkError(f"{path}: master key is not 64 hex digits") from exc
    if len(secret) != MASTER_KEY_BYTES:
        raise TracemarkError(f"{path}: master key is not 64 hex digits")
    return secret
