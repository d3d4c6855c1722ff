"""JPEG frames on the wire: encode on the arm's side, decode on the server's.

Pillow is imported here only, so a client sending raw frames never needs it. Decoding reads
the header first and refuses frames above a pixel bound before allocating anything, so a
crafted JPEG cannot make the server allocate gigabytes.
"""

from __future__ import annotations

import io

import numpy as np

from limbic.contracts import ContractError, check_image


def encode(image: np.ndarray, quality: int = 90) -> bytes:
    """Compress a ``uint8[H, W, 3]`` RGB frame to JPEG bytes at ``quality`` (1-100)."""
    from PIL import Image

    check_image("image", image)
    if not 1 <= quality <= 100:
        raise ContractError("jpeg_quality", f"expected an integer in [1, 100], got {quality}")
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(
        out, format="JPEG", quality=quality
    )
    return out.getvalue()


def decode(data: bytes, field_name: str, max_pixels: int) -> np.ndarray:
    """Decompress JPEG bytes to ``uint8[H, W, 3]``; raise ProtocolError naming ``field_name``."""
    from PIL import Image

    from limbic.runtime.protocol import ErrorCode, ProtocolError

    def bad(problem: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_FIELD, field_name, problem)

    # Pillow parsing untrusted bytes can raise many exception types (OSError, SyntaxError,
    # struct.error, EOFError ...); every one of them means "not a decodable JPEG".
    errors = Exception
    try:
        im = Image.open(io.BytesIO(data), formats=["JPEG"])
    except errors as e:
        raise bad(f"not a decodable JPEG: {type(e).__name__}: {e}") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise bad(f"JPEG of {height}x{width} exceeds {max_pixels} pixels")
        if im.mode != "RGB":
            raise bad(f"expected an RGB (3-channel) JPEG, got mode {im.mode}")
        try:
            im.load()
            image = np.asarray(im)
        except errors as e:
            raise bad(f"not a decodable JPEG: {type(e).__name__}: {e}") from None
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise bad(f"JPEG decoded to {image.dtype}{list(image.shape)}, expected uint8[H, W, 3]")
    return image
