"""Vision backbones (registry, pretrained EfficientNet-Lite0, transformers folders) and the language encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from limbic.policy.encoders import BACKBONES, LanguageEncoder, make_backbone
from limbic.policy.encoders.efficientnet_lite import EfficientNetLite0

torch.set_num_threads(1)


def _photo(name: str, size: int = 224) -> torch.Tensor:
    """A real photograph shipped with matplotlib / scikit-learn, centre-cropped, ``uint8[1, size, size, 3]``."""
    from PIL import Image

    paths = {
        "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
        "china": ("sklearn", "datasets/images/china.jpg"),
        "flower": ("sklearn", "datasets/images/flower.jpg"),
    }
    package, rel = paths[name]
    module = pytest.importorskip(package)
    path = Path(module.__file__).parent / rel
    if not path.exists():
        pytest.skip(f"{path} not installed")
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize(
        (size, size), Image.BILINEAR
    )
    return torch.from_numpy(np.array(im))[None]


@pytest.fixture(scope="module")
def lite0():
    return make_backbone("efficientnet_lite0")


def _top(logits: torch.Tensor, k: int = 3) -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return [_IMAGENET_CATEGORIES[int(i)] for i in logits[0].topk(k).indices]


def test_efficientnet_lite0_weights_are_real_imagenet_weights(lite0) -> None:
    """Real photos get their ImageNet classes; noise gets no confident class; random weights fail."""
    hopper = lite0.imagenet_logits(_photo("grace_hopper"))
    assert _top(hopper, 1) == ["military uniform"]
    assert "palace" in _top(lite0.imagenet_logits(_photo("china")))
    assert "daisy" in _top(lite0.imagenet_logits(_photo("flower")))
    # Consistent: a mirrored photo is still a military uniform.
    assert _top(lite0.imagenet_logits(_photo("grace_hopper").flip(2)), 1) == ["military uniform"]
    # Confident on photos, not on noise.
    noise = torch.randint(
        0, 256, (4, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    noise_conf = lite0.imagenet_logits(noise).softmax(-1).max(-1).values
    assert hopper.softmax(-1).max() > 1.5 * noise_conf.max()
    # The same architecture with random weights does not recognise the photo.
    torch.manual_seed(0)
    random_net = EfficientNetLite0().eval()
    with torch.no_grad():
        random_logits = random_net(lite0.normalise(_photo("grace_hopper")))
    assert _top(random_logits, 1) != ["military uniform"]


def test_efficientnet_lite0_is_frozen_and_gives_spatial_tokens(lite0) -> None:
    assert lite0.frozen and not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.net.training  # batch-norm statistics stay as pretrained
    images = torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8)
    tokens = lite0(images)
    assert tokens.shape == (2, 16, 1280) and tokens.dtype == torch.float32
    assert lite0.num_tokens((128, 128)) == 16
    # float input in [0, 1] is the same as uint8 / 255
    torch.testing.assert_close(lite0(images.float() / 255), tokens)
    fine = make_backbone("efficientnet_lite0:stride16")
    assert fine(images).shape == (2, 64, 112) and fine.feature_dim == 112 and fine.frozen
    with pytest.raises(ValueError, match="stride16"):
        make_backbone("efficientnet_lite0:stride8")


def test_small_cnn_is_trainable() -> None:
    cnn = make_backbone("small_cnn")
    tokens = cnn(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert tokens.shape == (2, 16, cnn.feature_dim)
    tokens.sum().backward()
    assert all(p.grad is not None for p in cnn.parameters())


def test_rgb_suffix_appends_each_cells_mean_colour() -> None:
    """``+rgb``: the wrapped backbone's tokens, then the mean colour of the pixels under each
    token, in ``[-1, 1]``, on its 4×4 grid (stride 16 on 64×64 frames)."""
    torch.manual_seed(0)
    inner = make_backbone("small_cnn")
    torch.manual_seed(0)
    rgb = make_backbone("small_cnn+rgb")
    assert rgb.name == "small_cnn+rgb" and rgb.feature_dim == inner.feature_dim + 3
    assert not rgb.frozen and rgb.colour_dim == 3
    images = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    images[:, :, :32, 0] = 255  # left half red
    images[:, :, 32:, 2] = 255  # right half blue
    images[:, 48:, 48:] = 255  # the bottom-right cell white
    tokens = rgb(images)
    assert tokens.shape == (1, 16, inner.feature_dim + 3)
    torch.testing.assert_close(tokens[..., :-3], inner(images))
    colour = tokens[0, :, -3:].reshape(4, 4, 3)
    torch.testing.assert_close(colour[1, 0], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(colour[1, 3], torch.tensor([-1.0, -1.0, 1.0]))
    torch.testing.assert_close(colour[3, 3], torch.tensor([1.0, 1.0, 1.0]))
    frozen = make_backbone("efficientnet_lite0:stride16+rgb")
    assert frozen.frozen and frozen.name == "efficientnet_lite0:stride16+rgb"
    assert frozen.num_tokens((128, 128)) == 64 and frozen.feature_dim == 115


def test_rgb_suffix_refuses_tokens_without_pixel_cells() -> None:
    rgb = make_backbone("small_cnn+rgb")
    with pytest.raises(ValueError, match="small_cnn\\+rgb.*15 tokens.*not a grid"):
        rgb.grid(15, (64, 64))


def test_registry_is_a_plain_dict_and_rejects_unknown_names() -> None:
    assert set(BACKBONES) == {"efficientnet_lite0", "small_cnn", "hf", "hf_trainable"}
    with pytest.raises(ValueError, match="unknown name 'resnet9'.*efficientnet_lite0"):
        make_backbone("resnet9")
    with pytest.raises(FileNotFoundError, match="local folder"):
        make_backbone("hf:/no/such/folder")


def test_hf_vit_from_a_local_folder(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ViTModel(config).save_pretrained(tmp_path)
    ViTImageProcessor(
        image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"height": 32, "width": 32}
    ).save_pretrained(tmp_path)
    backbone = make_backbone(f"hf:{tmp_path}")
    assert backbone.frozen and backbone.feature_dim == 32
    tokens = backbone(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))  # resized to 32x32
    assert tokens.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(backbone.mean.flatten(), torch.full((3,), 0.5))
    trainable = make_backbone(f"hf_trainable:{tmp_path}")  # the same model, fine-tuned
    assert not trainable.frozen
    trainable(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)).sum().backward()
    model = trainable.model  # gradients reach the patch embedding and the last layer's output
    assert model.embeddings.patch_embeddings.projection.weight.grad is not None
    assert model.encoder.layer[-1].output.dense.weight.grad is not None


def test_hf_cnn_feature_map_is_flattened(tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ResNetModel(config).save_pretrained(tmp_path)
    backbone = make_backbone(f"hf:{tmp_path}")
    tokens = backbone(torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8))
    assert tokens.shape[0] == 1 and tokens.shape[2] == 16 == backbone.feature_dim


@pytest.fixture(scope="module")
def language():
    return LanguageEncoder()


def test_language_encoder_matches_sentence_transformers(language) -> None:
    from sentence_transformers import SentenceTransformer

    from limbic.policy.encoders.language import minilm_path

    texts = ["push the red block onto the green target", "open the top drawer"]
    emb = language(texts)
    assert emb.shape == (2, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    reference = torch.from_numpy(
        SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)
    )
    torch.testing.assert_close(emb, reference, atol=1e-5, rtol=1e-4)


def test_language_encoder_caches_and_separates_meanings(
    language, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["push the red block", "push the blue block", "pour the water into the cup"]
    first = language(texts)
    calls = []
    monkeypatch.setattr(language, "_embed", lambda t: calls.append(t))
    again = language(list(reversed(texts)))
    assert calls == []  # served from the cache
    torch.testing.assert_close(again, first.flip(0))
    sim = first @ first.T
    assert sim[0, 1] > sim[0, 2]  # red vs blue block closer than block vs water
    with pytest.raises(ValueError, match=r"instructions\[1\]"):
        language(["ok", "  "])
    with pytest.raises(TypeError, match="single str"):
        language("push the red block")
