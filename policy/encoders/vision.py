"""Vision backbones shared by the policy and the progress critic, and their registry.

A backbone turns camera frames into a set of feature tokens: ``uint8[B, H, W, 3]`` (or
float in ``[0, 1]``) in, ``float32[B, N, feature_dim]`` out, where the ``N`` tokens are the
cells of the last feature map (CNNs) or the output tokens (transformers). Keeping the
spatial tokens, rather than one pooled vector, lets a language-conditioned head (FiLM,
attention pooling) decide *where* to look, and lets a frozen backbone's tokens be computed
once per frame and cached across many training pairs.

``make_backbone("efficientnet_lite0[:stride16]" | "small_cnn" | "hf:<local folder>")`` builds one; the
registry :data:`BACKBONES` is a plain dict from name to constructor. A ``+rgb`` suffix on any of
them (``efficientnet_lite0:stride16+rgb``) appends each token's mean pixel colour
(:class:`PatchColour`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

from limbic.policy.encoders.efficientnet_lite import (
    HEAD_CHANNELS,
    LITE0_STAGES,
    load_pretrained_lite0,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float_chw(images: torch.Tensor) -> torch.Tensor:
    """``uint8[B, H, W, 3]`` (or float in ``[0, 1]``) -> ``float32[B, 3, H, W]`` in ``[0, 1]``."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    elif not images.is_floating_point():
        raise ValueError(f"images: expected dtype uint8 or float in [0, 1], got {images.dtype}")
    return images.permute(0, 3, 1, 2).float().contiguous()


class VisionBackbone(nn.Module):
    """Base class: images ``uint8[B, H, W, 3]`` -> tokens ``float32[B, N, feature_dim]``.

    ``frozen`` backbones never receive gradients and always run in eval mode, so their
    output for a frame is a pure function of the frame and can be cached.
    """

    feature_dim: int
    frozen: bool
    name: str

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images in any accepted form -> normalised ``float32[B, 3, H, W]``."""
        return (to_float_chw(images) - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``float32[B, 3, H, W]`` -> tokens ``float32[B, N, feature_dim]``."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8[B, H, W, 3]`` (or float in ``[0, 1]``) -> ``float32[B, N, feature_dim]``."""
        x = self.normalise(images)
        if self.frozen:
            with torch.no_grad():
                return self.features(x)
        return self.features(x)

    def train(self, mode: bool = True) -> VisionBackbone:
        """Frozen backbones stay in eval mode (batch-norm statistics are part of the weights)."""
        return super().train(mode and not self.frozen)

    def num_tokens(self, image_hw: tuple[int, int]) -> int:
        """How many tokens a ``image_hw`` frame gives (by a dry run)."""
        with torch.no_grad():
            return int(self(torch.zeros(1, *image_hw, 3, dtype=torch.uint8)).shape[1])


def _flatten_map(fmap: torch.Tensor) -> torch.Tensor:
    return fmap.flatten(2).transpose(1, 2)  # [B, C, h, w] -> [B, h*w, C]


class EfficientNetLite0Backbone(VisionBackbone):
    """Frozen ImageNet EfficientNet-Lite0 (packaged weights, offline).

    ``stride=32`` (default): the 1280-d head features, one token per 32×32 pixels.
    ``stride=16``: the 112-d stage-5 features, one token per 16×16 pixels (finer positions).
    """

    def __init__(self, stride: int = 32) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        if stride not in (16, 32):
            raise ValueError(f"efficientnet_lite0 stride: expected 16 or 32, got {stride}")
        net = load_pretrained_lite0()
        net.requires_grad_(False)
        self.net = net
        self.stride = stride
        self.feature_dim = HEAD_CHANNELS if stride == 32 else LITE0_STAGES[4][5]
        self.frozen = True
        self.name = "efficientnet_lite0" if stride == 32 else "efficientnet_lite0:stride16"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> ``[B, (H/stride)*(W/stride), feature_dim]`` tokens."""
        fmap = self.net.forward_features(x) if self.stride == 32 else self.net.forward_stride16(x)
        return _flatten_map(fmap)

    def imagenet_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The pretrained classifier's ``float32[B, 1000]`` logits (to check the weights are real)."""
        with torch.no_grad():
            return self.net(self.normalise(images))


class SmallCNN(VisionBackbone):
    """Small trainable CNN (four stride-2 conv layers, group norm): tokens at stride 16."""

    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        chans = [3, width, width * 2, width * 4, feature_dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                nn.GroupNorm(8, c_out),
                nn.GELU(),
            ]
        self.net = nn.Sequential(*layers)
        self.feature_dim = feature_dim
        self.frozen = False
        self.name = "small_cnn"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> ``[B, (H/16)*(W/16), feature_dim]``."""
        return _flatten_map(self.net(x))


class HFVisionBackbone(VisionBackbone):
    """Any ``transformers`` vision model loaded with ``AutoModel`` from a local folder.

    Normalisation and input size come from the folder's image-processor config when it has
    one (else ImageNet statistics and the model config's ``image_size``). Output tokens are
    ``last_hidden_state``: the token sequence of a ViT-like model, or the flattened last
    feature map of a CNN-like one.
    """

    def __init__(self, folder: str, frozen: bool = True) -> None:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        path = Path(folder).expanduser()
        if not folder or not path.is_dir():
            raise FileNotFoundError(
                f"backbone 'hf:{folder}': expected a local folder holding a transformers "
                "config.json (and weights); nothing is downloaded"
            )
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if (path / "model.safetensors").exists() or (path / "pytorch_model.bin").exists():
            model = AutoModel.from_pretrained(path, local_files_only=True)
        else:
            raise FileNotFoundError(
                f"backbone 'hf:{folder}': no model.safetensors or pytorch_model.bin in the folder"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if (path / "preprocessor_config.json").exists():
            proc = AutoImageProcessor.from_pretrained(path, local_files_only=True)
            mean = tuple(getattr(proc, "image_mean", mean))
            std = tuple(getattr(proc, "image_std", std))
        super().__init__(mean, std)
        size = getattr(config, "image_size", None)
        self.input_hw: tuple[int, int] | None = (size, size) if isinstance(size, int) else None
        self.model = model.eval()
        self.frozen = frozen
        if frozen:
            self.model.requires_grad_(False)
        self.name = f"hf:{folder}"
        with torch.no_grad():
            hw = self.input_hw or (64, 64)
            self.feature_dim = int(self.features(torch.zeros(1, 3, *hw)).shape[-1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (resized to the model's input size) -> ``last_hidden_state`` tokens."""
        if self.input_hw is not None and tuple(x.shape[-2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False)
        out = self.model(pixel_values=x).last_hidden_state
        return _flatten_map(out) if out.ndim == 4 else out


class PatchColour(VisionBackbone):
    """Another backbone's tokens with the mean colour of each token's image cell appended.

    ImageNet features are trained to name objects whatever their colour, so a small object's
    colour is faint in them and pooling loses it. The last :attr:`colour_dim` channels of every
    token are here the red, green and blue means of the pixels under that token (its cell of the
    token grid), scaled to ``[-1, 1]``, so a head can compare colours it never saw in training.
    The wrapped backbone's tokens must form a grid of the image's aspect (CNN feature maps do;
    a transformer's class token does not)."""

    colour_dim = 3

    def __init__(self, inner: VisionBackbone) -> None:
        super().__init__(IMAGENET_MEAN, IMAGENET_STD)
        self.inner = inner
        self.feature_dim = inner.feature_dim + self.colour_dim
        self.frozen = inner.frozen
        self.name = f"{inner.name}+rgb"

    def grid(self, n: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The ``(rows, columns)`` of ``n`` tokens laid out over an ``image_hw`` frame."""
        h, w = image_hw
        rows = max(1, round((n * h / w) ** 0.5))
        cols = n // rows
        if rows * cols != n:
            raise ValueError(
                f"backbone {self.name!r}: {self.inner.name!r} gives {n} tokens for a {h}×{w} frame, "
                "not a grid of the frame's aspect, so its tokens have no pixel cells to colour"
            )
        return rows, cols

    def colours(self, images: torch.Tensor, n: int) -> torch.Tensor:
        """``uint8[B, H, W, 3]`` -> the mean colour of each of ``n`` token cells, ``float32[B, n, 3]``
        in ``[-1, 1]`` (the channels :meth:`forward` appends; a token cache keeps the inner
        backbone's tokens and adds these from the frames)."""
        rgb = to_float_chw(images)
        rows, cols = self.grid(n, (rgb.shape[2], rgb.shape[3]))
        return _flatten_map(F.adaptive_avg_pool2d(rgb, (rows, cols))) * 2.0 - 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8[B, H, W, 3]`` -> ``float32[B, N, inner.feature_dim + 3]``."""
        tokens = self.inner(images)
        colour = self.colours(images, tokens.shape[1])
        return torch.cat([tokens, colour.to(tokens.dtype)], dim=-1)


BackboneFactory = Callable[[str], VisionBackbone]


def _efficientnet_lite0(arg: str) -> VisionBackbone:
    strides = {"": 32, "stride32": 32, "stride16": 16}
    if arg not in strides:
        raise ValueError(
            f"backbone 'efficientnet_lite0:{arg}': expected no argument, ':stride32' or ':stride16'"
        )
    return EfficientNetLite0Backbone(strides[arg])


def _small_cnn(arg: str) -> VisionBackbone:
    if arg:
        raise ValueError(f"backbone 'small_cnn' takes no argument, got ':{arg}'")
    return SmallCNN()


def _hf(arg: str) -> VisionBackbone:
    return HFVisionBackbone(arg)


def _hf_trainable(arg: str) -> VisionBackbone:
    return HFVisionBackbone(arg, frozen=False)


BACKBONES: dict[str, BackboneFactory] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "small_cnn": _small_cnn,
    "hf": _hf,
    "hf_trainable": _hf_trainable,
}
"""Backbone name -> constructor taking the text after ``:`` (``hf:/models/dinov2-small``;
``hf_trainable:`` the same model, fine-tuned by learning)."""


def make_backbone(spec: str) -> VisionBackbone:
    """Build a backbone from ``name`` or ``name:argument`` (see :data:`BACKBONES`); a ``+rgb``
    suffix wraps it in :class:`PatchColour`."""
    if spec.endswith("+rgb"):
        return PatchColour(make_backbone(spec[: -len("+rgb")]))
    name, _, arg = spec.partition(":")
    if name not in BACKBONES:
        raise ValueError(
            f"backbone {spec!r}: unknown name {name!r}; choose from "
            f"{', '.join(sorted(BACKBONES))} (hf takes a local folder: 'hf:/path/to/model')"
        )
    return BACKBONES[name](arg)
