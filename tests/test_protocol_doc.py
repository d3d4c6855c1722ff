"""docs/protocol.md stays true: its plain pyzmq + msgpack client gets actions from a live server."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from serving import running_server, small_policy

from limbic.runtime.protocol import DTYPES, PROTOCOL_VERSION, ErrorCode
from limbic.runtime.servable import HashInstructionEncoder

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def plain_client_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    sources = [b for b in blocks if b.startswith("# protocol.md: plain client")]
    assert len(sources) == 1, "docs/protocol.md must hold exactly one plain client example"
    return sources[0]


def test_the_documented_client_imports_nothing_of_limbic():
    imported = set()
    for node in ast.walk(ast.parse(plain_client_source())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"sys", "time", "msgpack", "numpy", "zmq"}


def test_the_documented_client_gets_actions_from_a_live_server(tmp_path):
    module = small_policy()
    script = tmp_path / "plain_client.py"
    script.write_text(plain_client_source())
    with running_server() as server:
        # -I: isolated from PYTHONPATH and the working folder, so limbic's source tree is not on the path
        run = subprocess.run(
            [sys.executable, "-I", str(script), server.endpoint],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "actions (4, 3) float32 policy_version 0"
    first = np.array(ast.literal_eval(lines[1].removeprefix("first action ")))
    import torch

    h, w = module.image_hw
    images = torch.zeros((1, 2, h, w, 3), dtype=torch.uint8)
    lang = torch.from_numpy(
        HashInstructionEncoder(module.lang_dim).encode(["pick up the red cube"])
    )
    with torch.inference_mode():
        expected = module(images, torch.zeros((1, module.state_dim)), lang)[0, 0].numpy()
    np.testing.assert_allclose(first, expected, atol=1e-4)


def test_the_doc_states_the_implemented_version_codes_and_dtypes():
    text = DOC.read_text()
    assert f"# The limbic wire protocol (version {PROTOCOL_VERSION})" in text
    for code in ErrorCode:
        assert f"| `{code.value}` |" in text, code
    assert " ".join(DTYPES) in text
