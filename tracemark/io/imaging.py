"""Writing marked images back faithfully, and a perceptual hash to recognise leaked files.

A marked file must not be told from the copy's unmarked files (byte copies of the originals) by
anything but the mark, so it keeps its source's structure, not only its format, size and mode:

* PNG: every chunk of the source is copied in its order; only the IDAT run is re-encoded, with the
  source's interlacing, per-row filter types, zlib window, the zlib settings that reproduce the
  source's own stream (Pillow's, libpng's, zlib's, OpenCV's; else the level its FLEVEL bits name)
  and IDAT chunk size (:func:`write_png_like`). Unknown chunks marked unsafe to copy are dropped.
* JPEG: the new entropy-coded scans (Huffman tables optimised when the source's were, progressive
  when the source was) are spliced into the source's own marker segments: APPn, COM, DQT, SOF,
  DHT grouping in the source's order and bytes (:func:`splice_jpeg`). Re-encoded JPEGs keep the
  source's exact quantisation tables, subsampling and restart interval; a progressive file from an
  encoder whose scan script is not libjpeg's gets libjpeg's.

The mark itself is entropy: marked files stay larger than their sources (photo-like texture:
~0.5-1%; flat graphics and screenshots: several times).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin

# IJG standard luminance quantisation table (natural order), used to estimate JPEG quality.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
DEFAULT_JPEG_QUALITY = 95


def _ijg_table_sums() -> np.ndarray:
    sums = np.zeros(101)
    for q in range(1, 101):
        scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
        sums[q] = np.clip(np.floor((_STD_LUMA * scale + 50.0) / 100.0), 1, 255).sum()
    return sums


_IJG_SUMS = _ijg_table_sums()


def estimate_jpeg_quality(im: Image.Image) -> int | None:
    """IJG quality whose scaled luminance table is closest to the image's (order-free: sums)."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables:
        return None
    actual = float(sum(tables[0]))
    errs = np.abs(_IJG_SUMS[1:] - actual)
    best = int(np.argmin(errs)) + 1
    best_err = float(errs[best - 1])
    # a custom table far from any IJG scaling: do not pretend
    return best if best_err <= 0.05 * actual + 8 else None


def webp_is_lossless(path: str | Path) -> bool:
    """Whether a WebP file holds a lossless (VP8L) bitstream (RIFF chunk walk; Pillow does not say)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            return False
        while True:
            hdr = fh.read(8)
            if len(hdr) < 8:
                return False
            tag, size = hdr[:4], int.from_bytes(hdr[4:], "little")
            if tag == b"VP8L":
                return True
            if tag == b"VP8 ":
                return False
            fh.seek(size + (size & 1), 1)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Chunks whose meaning survives a change of pixel values (the rest of the spec's chunks are
#: critical or describe the image, not its bytes); unknown chunks are copied only when their
#: name says they are safe to copy (PNG spec 5.4), e.g. Apple's iDOT (IDAT offsets) is dropped.
_PNG_KNOWN = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"cHRM", b"gAMA", b"iCCP", b"sBIT", b"sRGB",
              b"cICP", b"mDCV", b"cLLI", b"tEXt", b"zTXt", b"iTXt", b"bKGD", b"hIST", b"pHYs", b"sPLT",
              b"eXIf", b"tIME", b"acTL", b"fcTL"}
#: Adam7 passes: (first row, first column, row step, column step).
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG, in file order; bytes after IEND, if any, come last
    as type ``b""``. Raises ValueError on a malformed file."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    out, i = [], 8
    while i < len(data):
        if i + 8 > len(data):
            raise ValueError("truncated chunk header")
        n, ctype = struct.unpack(">I", data[i:i + 4])[0], data[i + 4:i + 8]
        if i + 12 + n > len(data):
            raise ValueError("truncated chunk")
        out.append((ctype, data[i + 8:i + 8 + n]))
        i += 12 + n
        if ctype == b"IEND":
            if i < len(data):
                out.append((b"", data[i:]))
            break
    return out


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_zlib_level(zhead: bytes) -> int:
    """A zlib level that writes the same header as ``zhead`` (FLEVEL: 0 fastest, 1 fast, 2 default,
    3 maximum; FLEVEL 0 with a stored first block: level 0)."""
    flevel = zhead[1] >> 6
    if flevel == 0:
        return 0 if len(zhead) > 2 and (zhead[2] >> 1) & 3 == 0 else 1
    return {1: 5, 2: 6, 3: 9}[flevel]


_MEM_STRATEGIES = ((9, zlib.Z_FILTERED), (8, zlib.Z_FILTERED), (8, zlib.Z_DEFAULT_STRATEGY),
                   (9, zlib.Z_DEFAULT_STRATEGY))
#: (level, memLevel, strategy) tried per FLEVEL class: Pillow (memLevel 9, Z_FILTERED), libpng
#: (8, Z_FILTERED), plain zlib (8, default), OpenCV (Z_RLE), Huffman-only.
_DEFLATE_CANDIDATES = {
    0: [(1, 9, zlib.Z_FILTERED), (1, 8, zlib.Z_DEFAULT_STRATEGY), (1, 8, zlib.Z_RLE), (6, 8, zlib.Z_RLE),
        (1, 8, zlib.Z_HUFFMAN_ONLY)],
    1: [(lv, mem, st) for lv in (2, 3, 4, 5) for mem, st in _MEM_STRATEGIES],
    2: [(6, mem, st) for mem, st in _MEM_STRATEGIES],
    3: [(lv, mem, st) for lv in (9, 8, 7) for mem, st in _MEM_STRATEGIES],
}


def _png_deflate_settings(zsrc: bytes, raw: bytes, probe: int = 1 << 18,
                          quick: int = 1 << 16) -> tuple[int, int, int]:
    """The zlib (level, memLevel, strategy) that reproduces the source's own deflate stream from its
    own data (checked on a 256 KiB prefix), so the marked file compresses like its source did; when
    no candidate does, the level its header's FLEVEL bits name. A candidate is first tried on a
    ``quick`` prefix: what zlib writes for a prefix without flushing is a prefix of what it writes
    for more data, so a candidate that differs there differs on the whole probe too, and the answer
    is the same at a quarter of the cost per rejected candidate (sources of an unlisted encoder
    tried every candidate of their class on 256 KiB before); the accepted one continues its stream."""
    level = png_zlib_level(zsrc[:3])
    if level == 0:
        return 0, 8, zlib.Z_DEFAULT_STRATEGY
    wbits = max(9, (zsrc[0] >> 4) + 8)
    head = raw[:probe]
    for lv, mem, st in _DEFLATE_CANDIDATES[zsrc[1] >> 6]:
        c = zlib.compressobj(lv, zlib.DEFLATED, wbits, mem, st)
        out = c.compress(head[:quick])  # a stream: the rest continues it, nothing is compressed twice
        if not zsrc.startswith(out):
            continue
        out += c.compress(head[quick:]) + (c.flush() if len(head) == len(raw) else b"")
        if out and zsrc.startswith(out) and (len(head) < len(raw) or len(out) == len(zsrc)):
            return lv, mem, st
    return level, 8, zlib.Z_DEFAULT_STRATEGY


def _png_filter(rows: np.ndarray, ftypes: np.ndarray, bpp: int) -> np.ndarray:
    """Filter 8-bit scanlines (n x L) with the given per-row filter types; returns n x (1 + L)."""
    x = rows.astype(np.int16)
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    b = np.zeros_like(x)
    b[1:] = x[:-1]
    res = x.copy()
    for t in (1, 2, 3, 4):
        m = ftypes == t
        if not m.any():
            continue
        xa, xb = a[m], b[m]
        if t == 1:
            res[m] = x[m] - xa
        elif t == 2:
            res[m] = x[m] - xb
        elif t == 3:
            res[m] = x[m] - (xa + xb) // 2
        else:
            c = np.zeros_like(x)
            c[1:, bpp:] = x[:-1, :-bpp]
            xc = c[m]
            p = xa + xb - xc
            pa, pb, pc = np.abs(p - xa), np.abs(p - xb), np.abs(p - xc)
            res[m] = x[m] - np.where((pa <= pb) & (pa <= pc), xa, np.where(pb <= pc, xb, xc))
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = ftypes
    out[:, 1:] = (res & 0xFF).astype(np.uint8)
    return out


def write_png_like(pixels: np.ndarray, source: bytes, dest: Path) -> bool:
    """Write 8-bit ``pixels`` (H x W, or H x W x C in the source's colour type) as a PNG that
    has ``source``'s structure: its chunks in their order (bytes unchanged), its interlacing,
    per-row filter types, zlib window and level class, and IDAT chunk size. Returns False
    (nothing written) when the source is not an 8-bit grey / RGB / RGBA PNG it can mimic."""
    try:
        chunks = png_chunks(source)
    except ValueError:
        return False
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return False
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    channels = {0: 1, 2: 3, 6: 4}.get(ctype)
    px = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    if depth != 8 or channels is None or px.shape != (h, w, channels) or px.dtype != np.uint8:
        return False
    idat_sizes = [len(p) for t, p in chunks if t == b"IDAT"]
    zsrc = b"".join(p for t, p in chunks if t == b"IDAT")
    try:
        raw = zlib.decompress(zsrc)
    except zlib.error:
        return False
    parts, off = [], 0
    for ys, xs, dy, dx in (_ADAM7 if interlace else ((0, 0, 1, 1),)):
        sub = px[ys::dy, xs::dx]
        if sub.size == 0:
            continue
        n, rowlen = sub.shape[0], 1 + sub.shape[1] * channels
        ftypes = np.frombuffer(raw[off:off + n * rowlen], np.uint8)[::rowlen]
        off += n * rowlen
        if ftypes.size != n or (ftypes > 4).any():
            return False
        parts.append(_png_filter(sub.reshape(n, -1), ftypes.copy(), channels).tobytes())
    data = b"".join(parts)
    level, mem, strategy = _png_deflate_settings(zsrc, raw)
    comp = zlib.compressobj(level, zlib.DEFLATED, max(9, (zsrc[0] >> 4) + 8), mem, strategy)
    stream = comp.compress(data) + comp.flush()
    # libpng splits IDAT at a fixed size, Pillow at its buffer size: the first chunk's size is the rule
    step = idat_sizes[0] if len(idat_sizes) > 1 else max(len(stream), 1)
    out = [PNG_SIGNATURE]
    idat_done = False
    for t, p in chunks:
        if t == b"IDAT":
            if not idat_done:
                out += [_png_chunk(b"IDAT", stream[i:i + step]) for i in range(0, max(len(stream), 1), step)]
                idat_done = True
        elif t == b"":
            out.append(p)
        elif t in _PNG_KNOWN or t[3:4].islower():
            out.append(_png_chunk(t, p))
    _atomic_write(dest, b"".join(out))
    return True


def _atomic_write(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, dest)


_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: code counts per length (B.2.4.2) of the JPEG standard's example tables (K.3): DC / AC, luma / chroma
_STD_DHT_BITS = {
    (0, 0): (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0),
    (0, 1): (0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0),
    (1, 0): (0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D),
    (1, 1): (0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77),
}


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, raw bytes) of every segment of a JPEG in file order, SOI and EOI included; an SOS
    segment's bytes include its entropy-coded data (and restart markers). Bytes after EOI, if any,
    come last with marker -1. Raises ValueError on a malformed file."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out: list[tuple[int, bytes]] = [(0xD8, data[:2])]
    i = 2
    while i < len(data):
        start = i
        if data[i] != 0xFF:
            raise ValueError(f"no marker at byte {i}")
        while i + 1 < len(data) and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 1 >= len(data):
            raise ValueError("truncated marker")
        m = data[i + 1]
        if m == 0xD9:
            out.append((m, data[start:i + 2]))
            if i + 2 < len(data):
                out.append((-1, data[i + 2:]))
            return out
        if 0xD0 <= m <= 0xD7 or m == 0x01:
            out.append((m, data[start:i + 2]))
            i += 2
            continue
        if i + 4 > len(data):
            raise ValueError("truncated segment")
        j = i + 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
        if m == 0xDA:
            while True:
                k = data.find(b"\xff", j)
                if k < 0 or k + 1 >= len(data):
                    raise ValueError("scan data runs to the end of the file")
                if data[k + 1] == 0 or 0xD0 <= data[k + 1] <= 0xD7:
                    j = k + 2
                    continue
                if data[k + 1] == 0xFF:  # fill byte before a marker
                    j = k + 1
                    continue
                j = k
                break
        if j > len(data):
            raise ValueError("truncated segment")
        out.append((m, data[start:j]))
        i = j
    raise ValueError("no EOI marker")


def dht_tables(raw: bytes) -> list[tuple[int, int, tuple[int, ...], bytes]]:
    """(class 0 DC / 1 AC, slot, 16 code counts, symbols) of each Huffman table of a DHT segment."""
    body, out, i = raw[4:], [], 0
    while i + 17 <= len(body):
        tc, th = body[i] >> 4, body[i] & 15
        bits = tuple(body[i + 1:i + 17])
        n = sum(bits)
        out.append((tc, th, bits, bytes(body[i + 17:i + 17 + n])))
        i += 17 + n
    return out


def jpeg_huffman_is_standard(data: bytes) -> bool:
    """Whether every Huffman table of a JPEG is one of the standard's example tables (an encoder
    without optimize_coding); False when the tables were optimised for the image."""
    tables = [t for m, raw in jpeg_segments(data) if m == 0xC4 for t in dht_tables(raw)]
    return bool(tables) and all(bits in _STD_DHT_BITS.values() for _, _, bits, _ in tables)


def _dqt_tables(segs: list[tuple[int, bytes]]) -> dict[int, bytes]:
    tables: dict[int, bytes] = {}
    for m, raw in segs:
        if m != 0xDB:
            continue
        body, i = raw[4:], 0
        while i < len(body):
            n = 1 + 64 * (2 if body[i] >> 4 else 1)
            tables[body[i] & 15] = bytes(body[i:i + n])
            i += n
    return tables


def _component_ids(head: list[tuple[int, bytes]]) -> list[int]:
    """Component ids of the frame header (SOF), in frame order."""
    raw = next((raw for m, raw in head if m in _SOF), b"")
    n = raw[9] if len(raw) > 9 else 0
    return [raw[10 + 3 * i] for i in range(n) if len(raw) >= 13 + 3 * i]


def _renumber_frame(raw: bytes, ids: list[int]) -> bytes:
    """A SOF segment with its components renamed to ``ids`` (an encoder's own numbering, e.g.
    libjpeg's coefficient writer counts from 0 where the source counted from 1)."""
    if len(raw) < 10 or raw[9] != len(ids) or len(raw) < 10 + 3 * len(ids):
        return raw
    b = bytearray(raw)
    for i, cid in enumerate(ids):
        b[10 + 3 * i] = cid
    return bytes(b)


def _renumber_scan(raw: bytes, old: list[int], new: list[int]) -> bytes:
    """An SOS segment (header and data) whose component selectors follow the renaming old -> new."""
    if len(old) != len(new) or old == new or len(raw) < 5:
        return raw
    ren = dict(zip(old, new))
    b = bytearray(raw)
    for i in range(b[4]):
        if 6 + 2 * i < len(b):
            b[5 + 2 * i] = ren.get(b[5 + 2 * i], b[5 + 2 * i])
    return bytes(b)


def splice_jpeg(source: bytes, new: bytes) -> bytes:
    """``new``'s image (its scans, Huffman tables, and its quantisation / frame / restart segments
    where they differ from the source's) inside ``source``'s marker segments, in the source's order:
    APPn, COM and the rest of the source's header are kept byte for byte, and nothing of ``new``'s
    own header (its JFIF APP0, its comments) is added."""
    src, nsg = jpeg_segments(source), jpeg_segments(new)
    s_sos = next(i for i, (m, _) in enumerate(src) if m == 0xDA)
    n_sos = next(i for i, (m, _) in enumerate(nsg) if m == 0xDA)
    s_head, n_head = src[1:s_sos], nsg[1:n_sos]
    nsg = nsg[:n_sos] + [(m, _renumber_scan(raw, _component_ids(n_head), _component_ids(s_head)) if m == 0xDA else raw)
                         for m, raw in nsg[n_sos:]]
    n_head = [(m, _renumber_frame(raw, _component_ids(s_head)) if m in _SOF else raw) for m, raw in n_head]
    n_of = {m: [raw for mm, raw in n_head if mm == m] for m in (0xC4, 0xDB, 0xDD)}
    n_sof = [(m, raw) for m, raw in n_head if m in _SOF]
    same_dqt = _dqt_tables(s_head) == _dqt_tables(n_head)
    s_dri = [raw for m, raw in s_head if m == 0xDD]
    same_dri = [r[4:] for r in s_dri] == [r[4:] for r in n_of[0xDD]] or (not n_of[0xDD] and all(
        r[4:] == b"\0\0" for r in s_dri))
    out, placed = [src[0][1]], set()

    def place(kind: int, segs: list[bytes]) -> None:
        if kind not in placed:
            out.extend(segs)
            placed.add(kind)

    n_dht = {(tc, th): (bits, vals) for raw in n_of[0xC4] for tc, th, bits, vals in dht_tables(raw)}
    s_groups = [[(tc, th) for tc, th, _, _ in dht_tables(raw)] for m, raw in s_head if m == 0xC4]
    regroup = sorted(k for g in s_groups for k in g) == sorted(n_dht)  # the source's tables per segment
    for m, raw in s_head:
        if m == 0xC4 and regroup:
            group = s_groups.pop(0)
            body = b"".join(bytes([tc << 4 | th]) + bytes(n_dht[tc, th][0]) + n_dht[tc, th][1] for tc, th in group)
            out.append(b"\xff\xc4" + struct.pack(">H", len(body) + 2) + body)
            placed.add(0xC4)
        elif m == 0xC4:
            place(0xC4, n_of[0xC4])
        elif m == 0xDB:
            out.append(raw) if same_dqt else place(0xDB, n_of[0xDB])
        elif m in _SOF:
            out.append(raw) if n_sof and raw == n_sof[0][1] else place(0xC0, [r for _, r in n_sof])
        elif m == 0xDD:
            out.append(raw) if same_dri else place(0xDD, n_of[0xDD])
        else:
            out.append(raw)
    # whatever the new image needs that the source had no place for goes before its first scan
    for kind, segs in ((0xDB, [] if same_dqt else n_of[0xDB]), (0xC0, [r for _, r in n_sof]),
                       (0xDD, [] if same_dri else n_of[0xDD]), (0xC4, n_of[0xC4])):
        if kind == 0xC0 and any(m in _SOF for m, _ in s_head):
            continue
        place(kind, segs)
    out += [raw for m, raw in nsg[n_sos:] if m != -1]
    out += [raw for m, raw in src if m == -1]
    return b"".join(out)


def _decodes_alike(a: bytes, b: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(a)) as ia, Image.open(io.BytesIO(b)) as ib:
            return ia.size == ib.size and np.array_equal(np.asarray(ia.convert("RGB")), np.asarray(ib.convert("RGB")))
    except Exception:
        return False


def _splice_layout(source: bytes, new: bytes) -> tuple | None:
    """What decides whether :func:`splice_jpeg` of ``new`` into ``source`` decodes like ``new``: both
    files' segment kinds in order with every segment that changes decoding (DQT, SOF, DRI, SOS,
    Adobe APP14) byte for byte and each DHT's table slots; not the APPn / COM payloads (copied, never
    decoded) nor the entropy-coded data or Huffman code lengths (always ``new``'s)."""
    try:
        out = []
        for data in (source, new):
            segs = jpeg_segments(data)
            head = []
            for m, raw in segs:
                if m == 0xC4:
                    head.append((m, tuple((tc, th) for tc, th, _, _ in dht_tables(raw))))
                elif m == 0xDA:  # the scan header, not its data
                    head.append((m, raw[:2 + struct.unpack(">H", raw[2:4])[0]]))
                elif m in (0xDB, 0xDD, 0xEE) or m in _SOF:
                    head.append((m, raw))
                elif m != -1 and not 0xD0 <= m <= 0xD7:
                    head.append((m,))
            out.append(tuple(head))
        return tuple(out)
    except (ValueError, IndexError, StopIteration):
        return None


#: Layouts whose splice was verified to decode to the very same pixels (in this process): a file of
#: the same layout is spliced without decoding both versions again.
_SPLICE_VERIFIED: set[tuple] = set()


def write_jpeg_spliced(source: bytes, new: bytes, dest: Path) -> None:
    """Write ``new`` spliced into the marker segments of ``source`` (the source file's bytes, which
    every caller has read already: :func:`splice_jpeg`), or ``new`` itself when the splice would not
    decode to the very same pixels (an encoder layout the splice does not understand). That is
    checked by decoding both once per layout (:func:`_splice_layout`): the same layout splices to
    the same decoding."""
    try:
        spliced = splice_jpeg(source, new)
    except (ValueError, StopIteration):
        spliced = None
    if spliced is not None:
        layout = _splice_layout(source, new)
        if layout is None or layout not in _SPLICE_VERIFIED:
            if not _decodes_alike(spliced, new):
                spliced = None
            elif layout is not None and len(_SPLICE_VERIFIED) < 1024:
                _SPLICE_VERIFIED.add(layout)
    _atomic_write(dest, spliced if spliced is not None else new)


def save_like(marked_rgb: np.ndarray, source: Image.Image, dest: Path) -> None:
    """Save ``marked_rgb`` (uint8 HxWx3) to ``dest`` in the source's format, mode and structure.
    PNG: :func:`write_png_like`. JPEG (re-encoded: progressive, restart intervals, or no DCT-domain
    writer): the source's exact quantisation tables, subsampling, Huffman-table kind, progression
    and restart interval, spliced into the source's marker segments (:func:`write_jpeg_spliced`).
    Other formats keep what Pillow can carry: EXIF, ICC, resolution, TIFF compression, WebP
    losslessness."""
    mode = source.mode
    im = Image.fromarray(marked_rgb, "RGB")
    if mode == "L":
        im = im.convert("L")
    elif mode == "RGBA":
        im.putalpha(source.getchannel("A"))
    fmt = source.format or "PNG"
    src_path = getattr(source, "filename", None) or None
    src_bytes = Path(src_path).read_bytes() if src_path and fmt in ("PNG", "JPEG") else None
    if fmt == "PNG" and src_bytes is not None and write_png_like(np.asarray(im), src_bytes, dest):
        return
    kwargs: dict = {}
    for k in ("icc_profile", "exif", "dpi"):
        if k in source.info:
            kwargs[k] = source.info[k]
    if fmt == "JPEG":
        tables = getattr(source, "quantization", None)
        if tables:
            kwargs["qtables"] = tables  # the source's own tables, not an estimate of its quality
        else:
            kwargs["quality"] = estimate_jpeg_quality(source) or DEFAULT_JPEG_QUALITY
        try:
            kwargs["subsampling"] = JpegImagePlugin.get_sampling(source)
        except Exception:
            pass
        if kwargs.get("subsampling", 0) == -1:
            kwargs.pop("subsampling")
        if source.info.get("progressive") or source.info.get("progression"):
            kwargs["progressive"] = True
        if src_bytes is not None:
            try:
                segs = jpeg_segments(src_bytes)
                kwargs["optimize"] = not jpeg_huffman_is_standard(src_bytes)
                dri = [raw for m, raw in segs if m == 0xDD]
                if dri and len(dri[0]) >= 6:
                    kwargs["restart_marker_blocks"] = struct.unpack(">H", dri[0][4:6])[0]
            except ValueError:
                pass
    elif fmt == "PNG":
        level = 6
        if src_bytes is not None:
            try:
                idat = next(p for t, p in png_chunks(src_bytes) if t == b"IDAT")
                level = png_zlib_level(idat[:3])
            except (ValueError, StopIteration, KeyError, IndexError):
                pass
        kwargs["compress_level"] = level
        if "transparency" in source.info and mode in ("RGB", "L"):
            kwargs["transparency"] = source.info["transparency"]
        text = getattr(source, "text", None) or {}
        if text:
            from PIL import PngImagePlugin

            info = PngImagePlugin.PngInfo()
            for k, v in text.items():
                info.add_text(k, v)
            kwargs["pnginfo"] = info
    elif fmt == "TIFF":
        if source.info.get("compression") and source.info["compression"] != "raw":
            kwargs["compression"] = source.info["compression"]
        res = source.info.get("resolution")
        if isinstance(res, tuple) and len(res) == 2:
            kwargs["x_resolution"], kwargs["y_resolution"] = float(res[0]), float(res[1])
    elif fmt == "WEBP":
        lossless = bool(source.info.get("lossless")) or bool(
            getattr(source, "filename", None) and webp_is_lossless(source.filename))
        kwargs["lossless"] = lossless
        kwargs["quality"] = 100 if lossless else DEFAULT_JPEG_QUALITY
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    if fmt == "JPEG" and src_bytes is not None:
        write_jpeg_spliced(src_bytes, buf.getvalue(), dest)
    else:
        _atomic_write(dest, buf.getvalue())


def cover_crop(im: Image.Image, width: int, height: int) -> Image.Image:
    """``im`` resized (bicubic) so that it covers ``width`` x ``height``, then centre-cropped to it: how
    tracemark's trainer (and diffusers' with ``--center_crop``) brings a sample to the model's
    resolution, so that what the audit reads is what the model was trained on."""
    if im.size == (width, height):
        return im
    w, h = im.size
    s = max(width / w, height / h)
    im = im.resize((max(width, round(w * s)), max(height, round(h * s))), Image.Resampling.BICUBIC)
    left, top = (im.width - width) // 2, (im.height - height) // 2
    return im.crop((left, top, left + width, top + height))


def cover_crop_array(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """:func:`cover_crop` of a float H x W x 3 array (0..255, rounded to 8 bits on the way), as
    float32; the array itself when it already has that size."""
    if image.shape[:2] == (height, width):
        return image
    pil = Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return np.asarray(cover_crop(pil, width, height), dtype=np.float32)


def dhash(image: np.ndarray | Image.Image) -> int:
    """64-bit difference hash of an RGB array: survives JPEG and resizing, identifies the sample."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    g = im.convert("L").resize((9, 8), Image.Resampling.BOX)
    a = np.asarray(g, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))
