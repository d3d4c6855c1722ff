"""JPEG frames on the wire: encode on the arm's side, decode on the server's.

OpenCV (libjpeg-turbo; ``opencv-python-headless``, which LeRobot already needs) does the
work, about a third faster than Pillow, and is imported here only, so a client sending raw
frames never loads it. The header is read before decoding: a frame above the pixel bound or
not 3-channel is refused before anything is allocated, and a frame without its end-of-image
marker is refused as truncated (OpenCV would otherwise fill the missing rows silently).
"""

from __future__ import annotations

import numpy as np

from limbic.contracts import ContractError, check_image

# Start-of-frame markers (baseline, extended, progressive, lossless; not DHT C4, JPG C8, DAC CC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field


def encode(image: np.ndarray, quality: int = 90) -> bytes:
    """Compress a ``uint8[H, W, 3]`` RGB frame to JPEG bytes at ``quality`` (1-100)."""
    import cv2

    check_image("image", image)
    if not 1 <= quality <= 100:
        raise ContractError("jpeg_quality", f"expected an integer in [1, 100], got {quality}")
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ContractError(
            "image", f"OpenCV could not JPEG-encode an image of shape {image.shape}"
        )
    return data.tobytes()


def header(data: bytes) -> tuple[int, int, int]:
    """``(height, width, components)`` from a JPEG's start-of-frame segment; ValueError if absent."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("no start-of-image marker")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF_MARKERS:
            if i + 10 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return height, width, data[i + 9]
        if marker == 0xDA or length < 2:  # scan data before any frame header
            break
        i += 2 + length
    raise ValueError("no start-of-frame segment")


def decode(data: bytes, field_name: str, max_pixels: int) -> np.ndarray:
    """Decompress JPEG bytes to ``uint8[H, W, 3]`` RGB; raise ProtocolError naming ``field_name``."""
    import cv2

    from limbic.runtime.codec import ErrorCode, ProtocolError

    def bad(problem: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_FIELD, field_name, problem)

    try:
        height, width, components = header(data)
    except ValueError as e:
        raise bad(f"not a JPEG: {e}") from None
    if height * width > max_pixels:
        raise bad(f"JPEG of {height}x{width} exceeds {max_pixels} pixels")
    if components != 3:
        raise bad(f"expected a 3-channel (RGB) JPEG, got {components} channel(s)")
    if not bytes(data[-64:]).rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise bad("truncated JPEG: no end-of-image marker")
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (height, width, 3):
        raise bad("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
