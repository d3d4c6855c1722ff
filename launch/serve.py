"""``limbic-serve``: the inference server (policy + progress critic) for actor loops.

limbic-serve [key=value ...]            serve; overrides as in launch/conf/serve.yaml
limbic-serve --config FILE [key=value ...]
                                        serve a config file (limbic-train writes one)
limbic-serve keygen --out DIR [--name NAME] [--force]
                                        write a CURVE key pair (owner-readable only)
"""

from __future__ import annotations

import argparse
import logging
import sys

from limbic.launch.compose import load_or_compose, show
from limbic.launch.config import ConfigError


def keygen(argv: list[str]) -> int:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``--out``."""
    from limbic.runtime.auth import generate_keypair

    parser = argparse.ArgumentParser(
        prog="limbic-serve keygen", description="write a ZeroMQ CURVE key pair"
    )
    parser.add_argument("--out", required=True, help="folder for the key files")
    parser.add_argument("--name", default="server", help="file stem (default: server)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    public, secret = generate_keypair(args.out, args.name, args.force)
    print(f"public key (give to peers): {public}\nsecret key (keep private):  {secret}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``limbic-serve``."""
    from limbic.runtime.server import ServeConfig, serve

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["keygen"]:
        return keygen(argv[1:])
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\ndefault config:\n\n" + show("serve", []))
        return 0
    try:
        cfg = load_or_compose("serve", argv, ServeConfig)
    except ConfigError as e:
        print(f"limbic-serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
