"""Encoders shared by the policy and the progress critic: vision backbones and language."""

from limbic.policy.encoders.language import LanguageEncoder
from limbic.policy.encoders.vision import BACKBONES, VisionBackbone, make_backbone

__all__ = ["BACKBONES", "LanguageEncoder", "VisionBackbone", "make_backbone"]
