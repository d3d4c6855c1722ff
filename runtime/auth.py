"""ZeroMQ CURVE keys and authentication for endpoints that leave the machine.

``limbic-serve keygen`` writes a key pair in ZeroMQ's certificate format (``NAME.key`` with
the public key, ``NAME.key_secret`` with both), readable by the owner only. The server loads
its secret file; clients load the server's public file and their own pair; the server admits
only clients whose public ``.key`` file is in its authorized folder. A client without the
right keys never completes the handshake, so it gets nothing at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

_BANNER = "#   ZeroMQ CURVE {kind} certificate written by limbic-serve keygen; {note}\n"


def _write_private(path: Path, text: str, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)  # O_CREAT's mode is masked by umask and ignored on an existing file


def generate_keypair(out_dir: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (public + secret), mode 0600 both.

    Copy the public file to the peers that must trust this key; never the secret one.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_text = f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    sec_text = pub_text + f'    secret-key = "{secret.decode()}"\n'
    public_path, secret_path = out / f"{name}.key", out / f"{name}.key_secret"
    _write_private(
        public_path, _BANNER.format(kind="public", note="share with peers") + pub_text, force
    )
    _write_private(
        secret_path, _BANNER.format(kind="secret", note="keep private") + sec_text, force
    )
    return public_path, secret_path


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file; refuse one readable by others."""
    path = Path(secret_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"CURVE secret key {path} not found; write one with `limbic-serve keygen`"
        )
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is readable by other users; run `chmod 600 {path}`")
    public, secret = zmq.auth.load_certificate(path)
    if not secret:
        raise ValueError(
            f"{path} holds no secret key; pass the .key_secret file, not the public .key"
        )
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    """The public key from a ``.key`` (or ``.key_secret``) file."""
    path = Path(public_file)
    if not path.is_file():
        raise FileNotFoundError(f"CURVE public key {path} not found")
    return zmq.auth.load_certificate(path)[0]


def start_authenticator(ctx: zmq.Context, authorized_clients_dir: str) -> Any:
    """Start the ZAP handler for ``ctx``: admit clients whose ``.key`` is in the folder (any if empty)."""
    from zmq.auth.thread import ThreadAuthenticator

    if authorized_clients_dir and not Path(authorized_clients_dir).is_dir():
        raise FileNotFoundError(
            f"authorized clients folder {authorized_clients_dir} does not exist"
        )
    authenticator = ThreadAuthenticator(ctx)
    authenticator.start()
    authenticator.configure_curve(
        domain="*", location=authorized_clients_dir or zmq.auth.CURVE_ALLOW_ANY
    )
    return authenticator


def make_server(sock: zmq.Socket, public: bytes, secret: bytes) -> None:
    """Make ``sock`` a CURVE server (before bind)."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def make_client(
    sock: zmq.Socket, server_public: bytes, keypair: tuple[bytes, bytes] | None = None
) -> None:
    """Make ``sock`` a CURVE client of the server with ``server_public`` (before connect).

    Without ``keypair`` an ephemeral one is made: enough for a server that admits any client.
    """
    public, secret = keypair or zmq.curve_keypair()
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
