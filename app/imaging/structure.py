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
# Scans in a JPEG (all of its pictures, for a camera's multi-picture file). libjpeg runs over every
# block of the image once per scan (~3 ms a scan at 24 MP), so a file of thousands of 44-byte scans
# holds a worker for minutes. Baseline JPEGs have 1 to 4 scans, libjpeg's progressive script 10,
# mozjpeg's optimised scripts fewer than 20.
MAX_JPEG_SCANS = 64
# TIFF: entries in one IFD (real files: tens; a camera's EXIF IFD under 100), strips or tiles
# (Pillow builds one Python tile per entry at open: ~10 us and ~1 KB each; 12000 rows of one-row
# strips, planes separate, are 36000), and numbers in the IFD's tags all together (Pillow unpacks
# every one into a Python tuple at open, whatever the tag).
MAX_TIFF_ENTRIES = 1024
MAX_TIFF_STRIPS = 65536
MAX_TIFF_VALUES = 262144

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


def _check_jpeg_scans(data: bytes) -> None:
    # In entropy-coded data a 0xFF byte is always followed by 0x00 or a marker, so every FF DA from the
    # first scan on is a start of scan (a count at C speed, whatever the file's size). Metadata before the
    # first scan (an EXIF thumbnail's own scan) is not counted.
    first = data.find(b"\xff\xda")
    if first >= 0 and data.count(b"\xff\xda", first) > MAX_JPEG_SCANS:
        raise _crafted(f"more than {MAX_JPEG_SCANS} JPEG scans (encoders write at most about 20)")


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


# TIFF field types whose values Pillow unpacks one by one (SHORT, LONG, RATIONAL, their signed
# forms, FLOAT, DOUBLE, IFD, LONG8, SLONG8, IFD8); BYTE, ASCII and UNDEFINED stay bytes.
_TIFF_NUMBERS = {3, 4, 5, 8, 9, 10, 11, 12, 13, 16, 17, 18}
# StripOffsets, StripByteCounts, TileOffsets, TileByteCounts.
_TIFF_STRIP_TAGS = {273, 279, 324, 325}
# Sub-IFDs whose tags Pillow may read too (EXIF, GPS, Interoperability).
_TIFF_SUB_IFDS = {34665, 34853, 40965}


def _check_tiff_ifd(data: bytes, offset: int, endian: str, big: bool, depth: int = 0) -> None:
    count_format, entry_size = ("Q", 20) if big else ("H", 12)
    count_size = struct.calcsize(count_format)
    if offset + count_size > len(data):
        return  # Pillow reports the truncation
    (entries,) = struct.unpack_from(endian + count_format, data, offset)
    if entries > MAX_TIFF_ENTRIES:
        raise _crafted(f"a TIFF directory of more than {MAX_TIFF_ENTRIES} entries")
    values = 0
    entry_format = endian + ("HHQQ" if big else "HHII")
    for index in range(entries):
        at = offset + count_size + index * entry_size
        if at + entry_size > len(data):
            return
        tag, kind, count, value = struct.unpack_from(entry_format, data, at)
        if tag in _TIFF_STRIP_TAGS and count > MAX_TIFF_STRIPS:
            raise _crafted(f"more than {MAX_TIFF_STRIPS} TIFF strips or tiles")
        if kind in _TIFF_NUMBERS:
            values += count
            if values > MAX_TIFF_VALUES:
                raise _crafted(f"more than {MAX_TIFF_VALUES} numbers in a TIFF directory")
        if tag in _TIFF_SUB_IFDS and depth == 0 and count == 1:
            if not big:
                value = struct.unpack_from(endian + ("H" if kind == 3 else "I"), data, at + 8)[0]
            _check_tiff_ifd(data, value, endian, big, depth + 1)


def _check_tiff(data: bytes) -> None:
    """The first directory (the one Pillow reads at open, and decodes) and its EXIF/GPS directories."""
    endian = "<" if data[:2] == b"II" else ">"
    if len(data) < 16:
        return
    big = struct.unpack_from(endian + "H", data, 2)[0] == 43
    offset = struct.unpack_from(endian + ("Q" if big else "I"), data, 8 if big else 4)[0]
    _check_tiff_ifd(data, offset, endian, big)


def _check_bmp(data: bytes) -> None:
    # BITMAPINFOHEADER and later: the compression field follows the header size, width, height, planes, bpp.
    if len(data) >= 34 and struct.unpack_from("<I", data, 14)[0] >= 40:
        compression = struct.unpack_from("<I", data, 30)[0]
        if compression in (1, 2):
            # Pillow's RLE8/RLE4 decoder runs in Python, a few steps per pixel: an 18 KB file of
            # end-of-line codes cost 9 CPU s. Cameras and editors write uncompressed BMP.
            raise invalid_image(
                "The file is a run-length-encoded (RLE) BMP, which we do not accept; "
                "save it as an uncompressed BMP, PNG or JPEG."
            )


def check_structure(data: bytes) -> None:
    """400 invalid_image for a file whose structure is built to make parsing or decoding slow.

    Costs at most ~16k steps (the MAX_* bounds above) plus one count at C speed whatever the file's size.
    JPEG: fill bytes and segments before the first scan, and scans; PNG: chunks; GIF: blocks before the first
    image; TIFF (and BigTIFF): entries, numbers and strips or tiles in the directories Pillow reads; BMP: no RLE.
    WebP and HEIF/AVIF are parsed in C.
    """
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(data)
        _check_jpeg_scans(data)
    elif data.startswith(_PNG_SIGNATURE):
        _check_png(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(data)
    elif data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        _check_tiff(data)
    elif data.startswith(b"BM"):
        _check_bmp(data)
