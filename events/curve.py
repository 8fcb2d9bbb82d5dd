"""ZeroMQ CURVE keys: who may talk to a master that listens beyond loopback.

A key directory, made by `make_keys` (``nightpipe keys DIR``), holds the
server's key pair (``server.key`` public, ``server.key_secret``), a client key
pair (``client.key``, ``client.key_secret``) for the operator's own tools, and
``clients/``: the public keys of every client allowed in. Copy a client's
``.key_secret`` to whoever should send events; add other clients' public keys
to ``clients/``.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
CLIENT = "client"
CLIENTS_DIR = "clients"


class KeyFileError(ValueError):
    """A key directory that cannot be used; the message names the file."""


def make_keys(directory: str | Path, overwrite: bool = False) -> Path:
    """Make a key directory: a server pair, one client pair, and that client allowed in."""
    d = Path(directory)
    if (d / f"{SERVER}.key_secret").exists() and not overwrite:
        raise KeyFileError(f"{d}: already holds keys (--overwrite to replace them)")
    d.mkdir(parents=True, exist_ok=True)
    (d / CLIENTS_DIR).mkdir(exist_ok=True)
    zmq.auth.create_certificates(str(d), SERVER)
    public, _ = zmq.auth.create_certificates(str(d), CLIENT)
    shutil.copy(public, d / CLIENTS_DIR / Path(public).name)
    for secret in d.glob("*.key_secret"):
        secret.chmod(0o600)
    return d


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeyFileError(f"{path}: no such key file (make one with `nightpipe keys DIR`)")
    try:
        public, private = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate: {exc}") from None
    if secret and private is None:
        raise KeyFileError(f"{path}: holds no secret key")
    return public, private


@dataclass(frozen=True)
class ServerKeys:
    """A master's CURVE keys and the directory of the clients it lets in."""

    public: bytes
    secret: bytes
    clients: Path

    @classmethod
    def load(cls, directory: str | Path) -> ServerKeys:
        """Read them from a key directory made by `make_keys`."""
        d = Path(directory)
        public, secret = _load(d / f"{SERVER}.key_secret", secret=True)
        clients = d / CLIENTS_DIR
        if not clients.is_dir() or not any(clients.glob("*.key")):
            raise KeyFileError(f"{clients}: no client public keys: nobody could connect")
        assert secret is not None
        return cls(public, secret, clients)

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` a CURVE server (before it binds)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True


@dataclass(frozen=True)
class ClientKeys:
    """A client's CURVE key pair and the public key of the master it talks to."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, secret_file: str | Path, server_public: bytes | str) -> ClientKeys:
        """Read a client's ``.key_secret`` file; `server_public` is the master's key (Z85)."""
        public, secret = _load(Path(secret_file), secret=True)
        assert secret is not None
        server = server_public.encode() if isinstance(server_public, str) else server_public
        return cls(public, secret, server)

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` a CURVE client of the master (before it connects)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


class Authenticator:
    """Lets in only the clients whose public keys are in the key directory (a ZAP thread)."""

    def __init__(self, keys: ServerKeys) -> None:
        self._auth = ThreadAuthenticator(zmq.Context.instance())
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(keys.clients))

    def stop(self) -> None:
        """Stop the authenticator thread."""
        self._auth.stop()


def is_loopback(address: str) -> bool:
    """Whether a ZeroMQ address is reachable from this machine only."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(address).hostname or ""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except (OSError, ValueError):
            return False
