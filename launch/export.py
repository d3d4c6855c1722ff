"""``limbic-export``: ONNX files of the configured policy and critic (dynamic batch axis).

    limbic-export [key=value ...]           overrides as in launch/conf/export.yaml

Each file is checked against torch on random inputs before the command succeeds; serve
them with ``limbic-serve backend=onnx policy.onnx=DIR/policy.onnx critic.onnx=DIR/critic.onnx``.
"""

from __future__ import annotations

import sys

from limbic.launch.compose import compose, show
from limbic.launch.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``limbic-export``."""
    from limbic.runtime.onnx_export import ExportConfig, export_models

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\ndefault config:\n\n" + show("export", []))
        return 0
    try:
        cfg = compose("export", argv, ExportConfig)
    except ConfigError as e:
        print(f"limbic-export: {e}", file=sys.stderr)
        return 2
    export_models(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
