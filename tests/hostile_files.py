"""Hostile image files, built in code (no binaries in the repository): each is small for what it
costs a decoder that does not bound its work. Shared by tests/test_hostile_decoders.py and bench/.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _stuffed(bits: str) -> bytes:
    """Entropy-coded bytes from a bit string, padded with ones, 0xFF followed by 0x00."""
    bits += "1" * (-len(bits) % 8)
    out = bytearray()
    for at in range(0, len(bits), 8):
        byte = int(bits[at : at + 8], 2)
        out.append(byte)
        if byte == 0xFF:
            out.append(0)
    return bytes(out)


def progressive_jpeg_of_many_scans(width: int, height: int, scans: int) -> bytes:
    """A greyscale progressive JPEG of `scans` AC scans of ~20 bytes each: every scan is one
    end-of-band run over all blocks, so libjpeg walks the whole image once per scan."""
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    soi = b"\xff\xd8"
    dqt = _segment(0xDB, b"\x00" + bytes([1] * 64))
    sof2 = _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    # DC table 0: one code "0" for category 0; AC table 0: one code "0" for EOB14 (0xE0).
    dht = _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00" + b"\x10" + bytes([1] + [0] * 15) + b"\xe0")
    dc_scan = _segment(0xDA, b"\x01\x01\x00" + b"\x00\x00\x00") + _stuffed("0" * blocks)
    # EOB14 + 14 extra bits: a run of 2**14 + extra blocks (at most 32767) per code.
    runs = (blocks + 32766) // 32767
    ac_data = _stuffed(("0" + "1" * 14) * runs)
    ac_scan = _segment(0xDA, b"\x01\x01\x00" + b"\x01\x3f\x00") + ac_data
    return soi + dqt + sof2 + dht + dc_scan + ac_scan * scans + b"\xff\xd9"


def _tiff(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"", big: bool = False) -> bytes:
    """A little-endian (Big)TIFF: `entries` are (tag, type, count, inline value bytes or data put after)."""
    if big:
        head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16)
        ifd_at, entry_size, count_format, slot = 16, 20, "<Q", 8
    else:
        head = b"II*\x00" + struct.pack("<I", 8)
        ifd_at, entry_size, count_format, slot = 8, 12, "<H", 4
    data_at = ifd_at + struct.calcsize(count_format) + entry_size * len(entries) + slot
    ifd = bytearray(struct.pack(count_format, len(entries)))
    tail = bytearray()
    for tag, kind, count, value in entries:
        if len(value) <= slot:
            field = value.ljust(slot, b"\x00")
        else:
            field = struct.pack("<Q" if big else "<I", data_at + len(tail))
            tail += value
        ifd += struct.pack("<HHQ" if big else "<HHI", tag, kind, count) + field
    ifd += b"\x00" * slot  # no next IFD
    return head + bytes(ifd) + bytes(tail) + extra


def tiff_of_many_strips(strips: int) -> bytes:
    """A 1x2 px greyscale TIFF whose StripOffsets and StripByteCounts list `strips` entries each."""
    offsets = struct.pack(f"<{strips}I", *([8] * strips))
    counts = struct.pack(f"<{strips}I", *([1] * strips))
    return _tiff(
        [
            (256, 3, 1, struct.pack("<H", 1)),  # width
            (257, 3, 1, struct.pack("<H", 2)),  # height
            (258, 3, 1, struct.pack("<H", 8)),  # bits per sample
            (259, 3, 1, struct.pack("<H", 1)),  # no compression
            (262, 3, 1, struct.pack("<H", 1)),  # black is zero
            (273, 4, strips, offsets),
            (277, 3, 1, struct.pack("<H", 1)),
            (278, 3, 1, struct.pack("<H", 1)),  # one row per strip
            (279, 4, strips, counts),
        ]
    )


def bigtiff_of_many_entries(entries: int) -> bytes:
    """A BigTIFF whose first IFD has `entries` entries (private tags after the image's own)."""
    image = [
        (256, 3, 1, struct.pack("<H", 1)),
        (257, 3, 1, struct.pack("<H", 1)),
        (258, 3, 1, struct.pack("<H", 8)),
        (262, 3, 1, struct.pack("<H", 1)),
        (273, 16, 1, struct.pack("<Q", 8)),
        (279, 16, 1, struct.pack("<Q", 1)),
    ]
    private = [(65000, 3, 1, b"\x00\x00")] * (entries - len(image))
    return _tiff(image + private, big=True)


def bmp_rle8_of_line_ends(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP whose rows are one pixel and an end of line: 4 bytes a row, and Pillow's
    Python decoder pads the rest of each row one byte at a time."""
    pixels = b"\x01\x00\x00\x00" * height + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def truncated_png(width: int, height: int) -> bytes:
    """A valid PNG header (probe passes) whose pixel data stops half-way."""
    img = Image.new("RGB", (width, height), (40, 120, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    data = buf.getvalue()
    return data[: len(data) // 2]


def png_of_16_bit_grey(width: int, height: int) -> bytes:
    import numpy as np

    ramp = (np.arange(width * height, dtype=np.uint32) % 65536).astype(np.uint16).reshape(height, width)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def crc_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
