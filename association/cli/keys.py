"""``nightpipe keys DIR``: CURVE keys for a master that listens beyond loopback."""

from __future__ import annotations

import argparse
from typing import Any


def add_keys(sub: Any) -> None:
    """The ``keys`` subcommand's arguments."""
    p = sub.add_parser(
        "keys",
        help="make CURVE keys: a master needs them to listen beyond loopback",
        description=(
            "Makes DIR with the master's key pair, one client key pair, and clients/ holding"
            " the public keys of the clients let in. Run the master with --curve-keys DIR"
            " (or [runtime] curve_keys in the TOML); give a client its .key_secret file"
            " (nightpipe inject --key FILE)."
        ),
    )
    p.add_argument("dir", help="the key directory to make")
    p.add_argument("--overwrite", action="store_true", help="replace keys already there")


def cmd_keys(args: argparse.Namespace) -> int:
    """Make the key directory."""
    from events.curve import KeyFileError, make_keys

    try:
        d = make_keys(args.dir, overwrite=args.overwrite)
    except KeyFileError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"keys in {d}: server.key_secret (the master's), client.key_secret (a client's),")
    print(f"{d / 'clients'}/ (the public keys let in); keep the .key_secret files private")
    return 0


COMMANDS = {"keys": (add_keys, cmd_keys)}
