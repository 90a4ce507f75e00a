"""Bounded walks over an upload's container structure, before Pillow parses it.

Pillow reads some structures a byte or a block at a time in Python: JPEG fill and junk bytes
between markers, PNG chunks (every one, up to IEND, when it decodes), GIF extension blocks. A
crafted file made of millions of those costs seconds of CPU (and holds the GIL while it does)
for a 16x16 image: 24 MB of JPEG fill bytes took 18 s to probe here, two million empty PNG
chunks 24 s, eight million empty GIF comments 9 s. These walks look at the same structure at C
speed or with a bounded number of steps, and refuse a file that has far more of it than any
real encoder writes; what they let through, Pillow walks in bounded time.
"""

from __future__ import annotations

import struct

from app.errors import ApiError, invalid_image

# Bytes Pillow skips one at a time before a JPEG's first scan (fill 0xFF bytes and junk between
# segments). Encoders write none; a few stray bytes occur in damaged files.
MAX_JPEG_SKIPPED_BYTES = 4096
# Segments before the first scan: APPn (EXIF, XMP, ICC in up to 255 parts), DQT, DHT, SOF, DRI...
# A 25 MB file of 64 KB segments has at most ~400.
MAX_JPEG_SEGMENTS = 1024
# Chunks in a whole PNG (Pillow walks every one up to IEND): libpng writes 8 KB IDATs, so a
# 25 MB PNG has ~3200. ~3 us each in Pillow: the bound is ~50 ms.
MAX_PNG_CHUNKS = 16384
# Extension blocks and their sub-blocks before a GIF's first image (XMP and ICC are stored in
# 255-byte sub-blocks: 4 MB of metadata).
MAX_GIF_BLOCKS = 16384

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers with no length field: TEM, RST0-7, SOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8}


def _crafted(what: str) -> ApiError:
    return invalid_image(f"The file is not an image we accept: {what}.")


def _check_jpeg(data: bytes) -> None:
    pos, skipped, segments, size = 2, 0, 0, len(data)
    while pos < size:
        # The next marker: the first non-0xFF byte after a 0xFF. Looked for within what is left of
        # the budget only, so a 24 MB run of fill bytes costs as much as 4 KB of it.
        window = data[pos : pos + MAX_JPEG_SKIPPED_BYTES - skipped + 2]
        start = window.find(b"\xff")
        rest = window[start:].lstrip(b"\xff") if start >= 0 else b""
        if not rest:
            if pos + len(window) < size:
                raise _crafted(f"more than {MAX_JPEG_SKIPPED_BYTES} fill or junk bytes between JPEG segments")
            return  # ran out of data: Pillow reports the truncation
        marker_at = len(window) - len(rest)
        skipped += start + (marker_at - start - 1)  # junk, then fill bytes before the marker's own 0xFF
        if skipped > MAX_JPEG_SKIPPED_BYTES:
            raise _crafted(f"more than {MAX_JPEG_SKIPPED_BYTES} fill or junk bytes between JPEG segments")
        marker = rest[0]
        pos += marker_at + 1
        if marker == 0x00:  # an escaped 0xFF where a marker belongs: junk, skipped
            skipped += 1
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _crafted(f"more than {MAX_JPEG_SEGMENTS} JPEG segments before the image data")
        if marker in (0xDA, 0xD9):  # start of scan: the header is over (or the image ends)
            return
        if marker in _STANDALONE:
            continue
        if pos + 2 > size:
            return
        pos += struct.unpack_from(">H", data, pos)[0]


def _check_png(data: bytes) -> None:
    pos, chunks, size = len(_PNG_SIGNATURE), 0, len(data)
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _crafted(f"more than {MAX_PNG_CHUNKS} PNG chunks")
        if kind == b"IEND":
            return
        pos += 12 + length


def _check_gif(data: bytes) -> None:
    size = len(data)
    if size < 13:
        return
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    blocks = 0
    while pos < size and data[pos] == 0x21:  # an extension; 0x2C (the first image) ends the header
        pos += 2
        while pos < size:  # its sub-blocks, up to the empty one
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _crafted(f"more than {MAX_GIF_BLOCKS} GIF blocks before the first image")
            length = data[pos]
            pos += 1 + length
            if length == 0:
                break


def check_structure(data: bytes) -> None:
    """400 invalid_image for a JPEG, PNG or GIF whose structure is built to make parsing slow.

    Costs at most ~16k steps (the MAX_* bounds above) whatever the file's size. Other formats are parsed in C
    (WebP, HEIF/AVIF) or have structures bounded by their own fields (BMP, TIFF).
    """
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(data)
    elif data.startswith(_PNG_SIGNATURE):
        _check_png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(data)
