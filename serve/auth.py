"""Bearer tokens that map to tenants, stored hashed; TLS credentials for the server.

A token is `e4t_<key id>_<secret>`, made by `e4t serve token add`, shown once. The tokens file
keeps per token its key id, tenant, a random salt and sha256(salt + secret), never the secret:
the secret is 32 random bytes, so a salted sha256 resists guessing as well as a slow hash would,
and it costs microseconds per call where scrypt would cost tens of milliseconds. The key id
selects the one entry to compare, in constant time.

The server reads the file given by `--tokens` (re-read when it changes, so new tokens work
without a restart), or, without one, the same JSON in the environment variable E4T_TOKENS
(a Kubernetes Secret as an env var).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from e4t.safetensors_io import write_file
from serve.errors import Unauthenticated

FORMAT = "e4t.tokens/1"
ENV = "E4T_TOKENS"
_PREFIX = "e4t_"
_RECHECK_S = 1.0  # how often the server looks at the tokens file's mtime


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > 128 or not all(c.isalnum() or c in "-_." for c in tenant):
        raise ValueError(f"A tenant has to be 1-128 letters, digits, '-', '_' or '.' but is {tenant!r}.")
    return tenant


def _parse(text: str, where: str) -> dict[str, dict]:
    try:
        doc = json.loads(text)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        return {e["key_id"]: e for e in doc["tokens"]}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{where} is not an e4t tokens file: {e}") from e


def add_token(path: str | Path, tenant: str) -> str:
    """Adds a token for `tenant` to the tokens file at `path` (created if absent); returns the token."""
    path = Path(path)
    _check_tenant(tenant)
    entries = _parse(path.read_text(), str(path)) if path.exists() else {}
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
    entries[key_id] = {"key_id": key_id, "tenant": tenant, "salt": salt, "sha256": _digest(salt, secret),
                       "created": time.time()}  # fmt: skip
    write_file(path, json.dumps({"format": FORMAT, "tokens": list(entries.values())}, indent=1).encode())
    os.chmod(path, 0o600)  # hashes only, but no reason to show even those to other users
    return f"{_PREFIX}{key_id}_{secret}"


class TokenAuth:
    """Maps `authorization: Bearer <token>` metadata to a tenant; thread-safe."""

    def __init__(self, path: str | Path | None = None, *, text: str | None = None) -> None:
        if (path is None) == (text is None):
            raise ValueError("Give the tokens as a file path or as text, not both or neither.")
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._mtime = -1.0
        self._checked = 0.0
        self._entries = _parse(text, f"${ENV}") if text is not None else self._read()

    @classmethod
    def from_env(cls) -> TokenAuth | None:
        text = os.environ.get(ENV)
        return None if not text else cls(text=text)

    def _read(self) -> dict[str, dict]:
        assert self.path is not None
        try:
            self._mtime = self.path.stat().st_mtime
            return _parse(self.path.read_text(), str(self.path))
        except FileNotFoundError:
            raise ValueError(f"The tokens file {self.path} does not exist; see `e4t serve token add`.") from None

    def _current(self) -> dict[str, dict]:
        now = time.monotonic()
        if self.path is not None and now - self._checked > _RECHECK_S:
            with self._lock:
                self._checked = now
                try:
                    if self.path.stat().st_mtime != self._mtime:
                        self._entries = self._read()
                except (OSError, ValueError):  # a half-edited or removed file: keep the tokens we had
                    pass
        return self._entries

    def tenant_of(self, token: str) -> str:
        """The tenant of `token`; Unauthenticated (with no hint of which part is wrong) otherwise."""
        parts = token.split("_", 2)
        if len(parts) == 3 and parts[0] + "_" == _PREFIX:
            entry = self._current().get(parts[1])
            if entry is not None and hmac.compare_digest(_digest(entry["salt"], parts[2]), entry["sha256"]):
                return entry["tenant"]
        raise Unauthenticated("the bearer token is not valid.")

    def authenticate(self, context: grpc.ServicerContext) -> str:
        for key, value in context.invocation_metadata():
            if key == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated("the authorization metadata has to be `Bearer <token>`.")
                return self.tenant_of(token.strip())
        raise Unauthenticated("this server requires a bearer token (metadata `authorization: Bearer <token>`).")


@dataclass(frozen=True)
class TlsConfig:
    """PEM files: the server's certificate chain and key; with `client_ca`, clients must present a
    certificate it signed (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        for what, path in (("certificate", self.cert), ("key", self.key), ("client CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"The TLS {what} file {path} does not exist.")
        return grpc.ssl_server_credentials(
            [(Path(self.key).read_bytes(), Path(self.cert).read_bytes())],
            root_certificates=None if self.client_ca is None else Path(self.client_ca).read_bytes(),
            require_client_auth=self.client_ca is not None,
        )
