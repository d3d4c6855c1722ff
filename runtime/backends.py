"""Model runners: one served policy or critic on torch or ONNX Runtime.

A runner runs a batch of numpy inputs and returns numpy outputs, and holds the live weight
version. New weights load into a spare copy off the serving path (:meth:`prepare`, on the
weight thread) and become live by a reference swap between batches (:meth:`swap`, on the
batch thread), so a request never meets half-loaded weights and none waits for the copy.
"""

from __future__ import annotations

import abc
import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from limbic.runtime.protocol import CriticSpec, ErrorCode, PolicySpec, ProtocolError
from limbic.runtime.servable import (
    CachedInstructionEncoder,
    critic_spec,
    load_object,
    policy_spec,
)

POLICY_INPUTS = ("images", "state", "lang")
POLICY_OUTPUTS = ("actions",)
CRITIC_INPUTS = ("images_a", "images_b", "lang")
CRITIC_OUTPUTS = ("progress", "done_prob")
KINDS = ("policy", "critic")

log = logging.getLogger(__name__)

ONNX_META_KIND = "limbic.kind"
ONNX_META_SPEC = "limbic.spec"
ONNX_META_TENSORS = "limbic.tensors"
ONNX_META_UNSWAPPABLE = "limbic.unswappable"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to torch, else ``cpu``; others pass through."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def numpy_dtype_name(tensor: Any) -> str:
    """The numpy dtype a torch tensor travels as; bfloat16 (unknown to numpy) goes as float32."""
    name = str(tensor.dtype).removeprefix("torch.")
    return "float32" if name == "bfloat16" else name


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one state-dict entry a weight update must provide."""

    shape: tuple[int, ...]
    dtype: str


def check_update(expected: dict[str, TensorSpec], tensors: dict[str, np.ndarray]) -> None:
    """Raise ``bad_field`` naming the first missing, unexpected, mis-shaped or non-finite tensor.

    Float tensors may arrive in any float dtype (cast on load); integer and bool buffers must
    keep their kind.
    """
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            "tensors",
            f"keys differ from the served model: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    for name, spec in expected.items():
        array = tensors[name]
        where = f"tensors[{name!r}]"
        if tuple(array.shape) != spec.shape:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                where,
                f"expected shape {list(spec.shape)}, got {list(array.shape)}",
            )
        if np.dtype(spec.dtype).kind != array.dtype.kind:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                where,
                f"expected a {spec.dtype}-compatible dtype, got {array.dtype}",
            )
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError(
                ErrorCode.BAD_FIELD, where, "contains NaN or inf; refusing to serve it"
            )


class ModelRunner(abc.ABC):
    """One served model: its spec, instruction encoder, live version and batched call."""

    kind: str
    spec: PolicySpec | CriticSpec
    encoder: CachedInstructionEncoder
    version: int
    backend: str

    @abc.abstractmethod
    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run one batch; inputs and outputs in the servable interface's order."""

    @abc.abstractmethod
    def expected_tensors(self) -> dict[str, TensorSpec]:
        """The state-dict entries a weight update must carry."""

    @abc.abstractmethod
    def prepare(self, tensors: dict[str, np.ndarray]) -> Any:
        """Load new weights into a spare copy (not yet live); raise ``bad_field`` if they do not fit."""

    @abc.abstractmethod
    def swap(self, prepared: Any, version: int) -> None:
        """Make prepared weights live; call only between batches, on the batch thread."""

    def _check_encoder(self) -> None:
        if self.encoder.dim != self.spec.lang_dim:
            raise ValueError(
                f"{self.kind} expects lang_dim={self.spec.lang_dim} but its instruction encoder "
                f"{type(self.encoder.encoder).__name__} makes {self.encoder.dim}-d embeddings"
            )


class TorchRunner(ModelRunner):
    """A servable ``torch.nn.Module`` on CUDA or CPU, in inference mode."""

    backend = "torch"

    def __init__(
        self,
        module: Any,
        kind: str,
        encoder: CachedInstructionEncoder,
        version: int = 0,
        device: str = "auto",
    ):
        import torch

        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        self._torch = torch
        self.kind = kind
        self.spec = policy_spec(module) if kind == "policy" else critic_spec(module)
        self.encoder = encoder
        self._check_encoder()
        self.device = torch.device(resolve_device(device))
        self.version = int(version)
        self.active = module.to(self.device).eval()
        self._spare = None  # created at the first weight update: double memory only when needed

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run one batch on the live module."""
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(x) for x in inputs]
            if self.device.type != "cpu":
                args = [a.to(self.device, non_blocking=True) for a in args]
            out = self.active(*args)
            outs = out if isinstance(out, tuple | list) else (out,)
            return tuple(o.to("cpu", torch.float32).numpy() for o in outs)

    def expected_tensors(self) -> dict[str, TensorSpec]:
        """Every state-dict entry of the served module."""
        return {
            k: TensorSpec(tuple(v.shape), numpy_dtype_name(v))
            for k, v in self.active.state_dict().items()
        }

    def prepare(self, tensors: dict[str, np.ndarray]) -> Any:
        """Copy the update into the spare module (created by a deep copy on first use)."""
        torch = self._torch
        check_update(self.expected_tensors(), tensors)
        if self._spare is None:
            self._spare = copy.deepcopy(self.active)
        with torch.no_grad():
            self._spare.load_state_dict(
                {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}, strict=True
            )
        return self._spare

    def swap(self, prepared: Any, version: int) -> None:
        """The spare becomes live; the old live module is the next spare."""
        self.active, self._spare = prepared, self.active
        self.version = int(version)


def _ort_providers(device: str) -> list[Any]:
    """ONNX Runtime's provider list for a resolved device: ``cuda[:N]`` first, the CPU always."""
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxRunner(ModelRunner):
    """An ONNX file written by ``limbic-export``, on ONNX Runtime (CUDA provider when present).

    New weights replace the file's initializers by name in a fresh session built off the
    serving path; the file's metadata lists which state-dict keys it holds as initializers.
    Files above 2 GB (ONNX external data) are not supported yet.
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        encoder: CachedInstructionEncoder,
        version: int = 0,
        device: str = "auto",
    ):
        import onnxruntime as ort

        self._ort = ort
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f"ONNX model {self.path} does not exist; write it with limbic-export"
            )
        self._model_bytes = self.path.read_bytes()
        wanted = resolve_device(device)
        if (
            wanted.startswith("cuda")
            and "CUDAExecutionProvider" not in ort.get_available_providers()
        ):
            if device != "auto":
                raise RuntimeError(
                    f"device={device!r}: this ONNX Runtime build has no CUDAExecutionProvider "
                    f"(it has {ort.get_available_providers()}); install onnxruntime-gpu alone "
                    "(not beside plain onnxruntime) or serve with device=cpu"
                )
            # torch sees a GPU, ONNX Runtime cannot use it: run on the CPU
            log.warning(
                "ONNX Runtime has no CUDAExecutionProvider (it has %s); %s runs on the CPU",
                ort.get_available_providers(),
                self.path,
            )
            wanted = "cpu"
        self.providers = _ort_providers(wanted)
        self.session = self._session(None)
        live = self.session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in live else "cpu"
        if wanted.startswith("cuda") and self.device != "cuda":
            # ONNX Runtime falls back to the CPU silently when the CUDA libraries fail to load
            raise RuntimeError(
                f"device={device!r}: ONNX Runtime could not start its CUDA provider for "
                f"{self.path} (session providers: {live}); check that the CUDA and cuDNN "
                "libraries onnxruntime-gpu needs are installed, or serve with device=cpu"
            )
        meta = self.session.get_modelmeta().custom_metadata_map
        for key in (ONNX_META_KIND, ONNX_META_SPEC, ONNX_META_TENSORS):
            if key not in meta:
                raise ValueError(
                    f"{self.path} lacks metadata {key!r}; export it with limbic-export"
                )
        self.kind = meta[ONNX_META_KIND]
        spec = json.loads(meta[ONNX_META_SPEC])
        self.spec = (
            PolicySpec.from_dict(spec) if self.kind == "policy" else CriticSpec.from_dict(spec)
        )
        self._tensors = {
            k: TensorSpec(tuple(s), d) for k, (s, d) in json.loads(meta[ONNX_META_TENSORS]).items()
        }
        self._unswappable = json.loads(meta.get(ONNX_META_UNSWAPPABLE, "[]"))
        self.encoder = encoder
        self._check_encoder()
        self.version = int(version)
        self._inputs = POLICY_INPUTS if self.kind == "policy" else CRITIC_INPUTS
        self._outputs = POLICY_OUTPUTS if self.kind == "policy" else CRITIC_OUTPUTS

    def _session(self, overrides: dict[str, np.ndarray] | None) -> Any:
        """A session of the file, or of a copy whose initializers are replaced by ``overrides``.

        The copy is rewritten rather than using ``SessionOptions.add_initializer``: with full
        graph optimisation ONNX Runtime's layout transforms read conv weights from the model
        itself and would silently keep the old ones.
        """
        import onnx
        from onnx import numpy_helper

        data = self._model_bytes
        if overrides:
            model = onnx.load_model_from_string(self._model_bytes)
            for init in model.graph.initializer:
                if init.name in overrides:
                    init.CopyFrom(
                        numpy_helper.from_array(
                            np.ascontiguousarray(overrides[init.name]), init.name
                        )
                    )
            data = model.SerializeToString()
        options = self._ort.SessionOptions()
        options.log_severity_level = 3
        return self._ort.InferenceSession(data, options, providers=self.providers)

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run one batch on the live session."""
        feeds = dict(zip(self._inputs, inputs, strict=True))
        return tuple(self.session.run(list(self._outputs), feeds))

    def expected_tensors(self) -> dict[str, TensorSpec]:
        """The state-dict entries recorded at export."""
        return dict(self._tensors)

    def prepare(self, tensors: dict[str, np.ndarray]) -> Any:
        """Build a new session with the update's arrays as its initializers."""
        if self._unswappable:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "tensors",
                f"{self.path} folded state-dict entries {self._unswappable[:5]} into constants at export, "
                "so its weights cannot be swapped; serve with backend=torch or re-export without folding",
            )
        check_update(self._tensors, tensors)
        cast = {
            k: np.asarray(v, dtype=np.dtype(self._tensors[k].dtype)) for k, v in tensors.items()
        }
        return self._session(cast)

    def swap(self, prepared: Any, version: int) -> None:
        """The new session becomes live."""
        self.session = prepared
        self.version = int(version)


# ---------------------------------------------------------------- from config


@dataclass
class EncoderConfig:
    """How instructions become the ``lang`` input: a class taking ``args``, cached per instruction."""

    target: str = "limbic.runtime.servable:HashInstructionEncoder"
    """``package.module:Class`` with ``dim`` and ``encode(texts) -> float32[N, dim]``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the class. (An empty default: a config's map is merged into the
    default map, so a non-empty default would leak into every other encoder's arguments.)"""
    cache_size: int = 4096
    """Instructions kept in the embedding cache."""


@dataclass
class ModelConfig:
    """One served model: built from ``target(**args)`` (torch) or read from ``onnx`` (ONNX Runtime)."""

    target: str = ""
    """``package.module:Class`` of a servable module; empty (with no ``onnx``) means not served."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the class."""
    weights: str = ""
    """A ``.safetensors`` file of the module's state dict; empty keeps the initial weights."""
    onnx: str = ""
    """ONNX file written by ``limbic-export``, used when ``backend=onnx``."""
    version: int = 0
    """Version of the initial weights; a learner's updates must go above it."""
    instruction_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """The instruction encoder feeding ``lang``."""


def build_module(cfg: ModelConfig) -> Any:
    """Instantiate ``cfg.target(**cfg.args)`` and load ``cfg.weights`` (safetensors, never pickle)."""
    module = load_object(cfg.target)(**cfg.args)
    if cfg.weights:
        from safetensors.torch import load_file

        if not Path(cfg.weights).is_file():
            raise FileNotFoundError(f"weights file {cfg.weights} does not exist")
        module.load_state_dict(load_file(cfg.weights), strict=True)
    return module


def build_runner(
    cfg: ModelConfig, kind: str, backend: str, device: str = "auto"
) -> ModelRunner | None:
    """The runner for one configured model, or None when the config serves nothing."""
    if not cfg.target and not cfg.onnx:
        return None
    encoder_cls = load_object(cfg.instruction_encoder.target)
    encoder = CachedInstructionEncoder(
        encoder_cls(**cfg.instruction_encoder.args), cfg.instruction_encoder.cache_size
    )
    if backend == "torch":
        if not cfg.target:
            raise ValueError(f"{kind}.target is empty: backend=torch builds the module from it")
        return TorchRunner(build_module(cfg), kind, encoder, cfg.version, device)
    if backend == "onnx":
        if not cfg.onnx:
            raise ValueError(
                f"{kind}.onnx is empty: backend=onnx needs a file written by limbic-export"
            )
        runner = OnnxRunner(cfg.onnx, encoder, cfg.version, device)
        if runner.kind != kind:
            raise ValueError(f"{cfg.onnx} holds a {runner.kind}, configured as the {kind}")
        return runner
    raise ValueError(f"backend: expected 'torch' or 'onnx', got {backend!r}")
