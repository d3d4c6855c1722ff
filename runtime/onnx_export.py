"""ONNX export of servable policies and critics, with a dynamic batch axis.

The file exports the servable forward signature unchanged (uint8 frames in, float32 out) and
carries in its metadata the model's spec and the state-dict entries it holds as named
initializers, which the ONNX Runtime backend needs to serve it and to swap its weights.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from limbic.runtime.backends import (
    CRITIC_INPUTS,
    CRITIC_OUTPUTS,
    ONNX_META_KIND,
    ONNX_META_SPEC,
    ONNX_META_TENSORS,
    ONNX_META_UNSWAPPABLE,
    POLICY_INPUTS,
    POLICY_OUTPUTS,
    ModelConfig,
    OnnxRunner,
    build_module,
    numpy_dtype_name,
)
from limbic.runtime.servable import (
    CachedInstructionEncoder,
    HashInstructionEncoder,
    critic_spec,
    policy_spec,
)

log = logging.getLogger(__name__)

_EXAMPLE_BATCH = 2  # not 1: the exporter would specialise a size-1 axis to a constant


def example_inputs(
    module: Any, kind: str, batch: int = _EXAMPLE_BATCH, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Random inputs of the servable signature for ``module``, as numpy arrays."""
    rng = np.random.default_rng(seed)
    spec = policy_spec(module) if kind == "policy" else critic_spec(module)
    h, w = spec.image_hw

    def frames() -> np.ndarray:
        return rng.integers(0, 256, (batch, len(spec.views), h, w, 3), dtype=np.uint8)

    lang = rng.standard_normal((batch, spec.lang_dim)).astype(np.float32)
    if kind == "policy":
        return frames(), rng.standard_normal((batch, spec.state_dim)).astype(np.float32), lang
    return frames(), frames(), lang


def export_onnx(module: Any, kind: str, path: str | Path, opset: int = 18) -> Path:
    """Write ``module`` (a servable ``policy`` or ``critic``) to ``path`` as ONNX.

    The module is put in eval mode on the CPU first (exporting traces it there).
    """
    import onnx
    import torch

    if kind not in ("policy", "critic"):
        raise ValueError(f"kind: expected 'policy' or 'critic', got {kind!r}")
    spec = policy_spec(module) if kind == "policy" else critic_spec(module)
    inputs, outputs = (
        (POLICY_INPUTS, POLICY_OUTPUTS) if kind == "policy" else (CRITIC_INPUTS, CRITIC_OUTPUTS)
    )
    module = module.eval().cpu()
    args = tuple(torch.from_numpy(a) for a in example_inputs(module, kind))
    batch = torch.export.Dim("batch", min=1, max=65536)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Two known harmless messages of torch 2.10's exporter; anything else still shows.
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated"
        )
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            # Unoptimised graphs keep every parameter as an initializer named by its state-dict key,
            # which hot swap needs; ONNX Runtime optimises the graph at load anyway.
            optimize=False,
            opset_version=opset,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_shapes={name: {0: batch} for name in module_argnames(module, len(inputs))},
            verbose=False,
        )
    program.save(str(path))
    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    state = module.state_dict()
    tensors = {
        k: [list(v.shape), numpy_dtype_name(v)] for k, v in state.items() if k in initializers
    }
    unswappable = sorted(k for k in state if k not in initializers)
    if unswappable:
        log.warning(
            "%s: state-dict entries %s were folded at export; its weights cannot be hot-swapped",
            path,
            unswappable[:5],
        )
    meta = {
        ONNX_META_KIND: kind,
        ONNX_META_SPEC: json.dumps(spec.to_dict()),
        ONNX_META_TENSORS: json.dumps(tensors),
        ONNX_META_UNSWAPPABLE: json.dumps(unswappable),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def module_argnames(module: Any, count: int) -> list[str]:
    """The names of ``forward``'s first ``count`` parameters (``dynamic_shapes`` is keyed by them)."""
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values() if p.name != "self"]
    if len(params) < count:
        raise TypeError(
            f"{type(module).__name__}.forward takes {len(params)} inputs, a servable needs {count}"
        )
    return [p.name for p in params[:count]]


def max_abs_difference(module: Any, path: str | Path, batch: int = 3, seed: int = 1) -> float:
    """Largest |torch - ONNX Runtime| over all outputs on the same random inputs (CPU)."""
    import torch

    runner = OnnxRunner(
        path, CachedInstructionEncoder(HashInstructionEncoder(int(module.lang_dim))), device="cpu"
    )
    inputs = example_inputs(module, runner.kind, batch=batch, seed=seed)
    with torch.inference_mode():
        expected = module.eval().cpu()(*(torch.from_numpy(a) for a in inputs))
    expected = expected if isinstance(expected, tuple | list) else (expected,)
    got = runner.run(*inputs)
    return max(float(np.max(np.abs(e.numpy() - g))) for e, g in zip(expected, got, strict=True))


@dataclass
class ExportConfig:
    """``limbic-export``: write ONNX files of the configured policy and critic."""

    out_dir: str = "exports"
    """Folder for ``policy.onnx`` and ``critic.onnx``."""
    opset: int = 18
    """ONNX opset."""
    check_atol: float = 1e-4
    """After export, fail unless ONNX Runtime matches torch within this on random inputs."""
    policy: ModelConfig = field(default_factory=ModelConfig)
    """The policy to export (empty target: skip)."""
    critic: ModelConfig = field(default_factory=ModelConfig)
    """The critic to export (empty target: skip)."""


def export_models(cfg: ExportConfig) -> list[Path]:
    """Export each configured model, check it against torch, and return the written paths."""
    written = []
    for kind, model_cfg in (("policy", cfg.policy), ("critic", cfg.critic)):
        if not model_cfg.target:
            continue
        module = build_module(model_cfg)
        path = export_onnx(module, kind, Path(cfg.out_dir) / f"{kind}.onnx", cfg.opset)
        diff = max_abs_difference(module, path)
        if diff > cfg.check_atol:
            raise RuntimeError(
                f"{path}: ONNX Runtime differs from torch by {diff:.3g} > check_atol={cfg.check_atol}"
            )
        print(f"limbic-export: wrote {path} (max |torch - onnxruntime| = {diff:.2e})", flush=True)
        written.append(path)
    if not written:
        raise ValueError("nothing to export: both policy.target and critic.target are empty")
    return written
