"""Decoder for Unix ``compress`` (``.Z``, adaptive LZW) streams, vectorised with NumPy.

UCI still ships ISOLET as ``.Z`` files and neither the standard library nor our dependencies read
them. The format (Welch 1984, "A Technique for High-Performance Data Compression", IEEE Computer
17(6), as implemented by ``compress`` 4.x):

* three header bytes ``1f 9d flags``: ``flags & 0x1f`` is the largest code width (9..16 bits),
  ``flags & 0x80`` is *block mode*, where code 256 (CLEAR) empties the string table;
* little-endian codes, 9 bits wide at first; the width grows by one bit when the next table entry
  would not fit, up to the largest width;
* the encoder writes codes in groups of eight, so when the width changes or a CLEAR arrives the
  rest of the current group is padding: reading resumes at the next multiple of ``8 * width`` bits
  counted from where the current width began.

Decoding is split in two so that NumPy does the per-code work: the code stream is cut into blocks
between CLEARs, and each block's table (entry ``e`` = string of its prefix code + one byte) is
rebuilt at once by pointer jumping instead of code by code.
"""

from __future__ import annotations

import numpy as np

from evosparse.errors import DataError

MAGIC = b"\x1f\x9d"
_WIDTH_MASK = 0x1F
_BLOCK_MODE = 0x80
_FIRST_WIDTH = 9
_CLEAR = 256
#: Codes read per pass once the width stops growing; a multiple of 8 keeps the group phase.
_TOP_WIDTH_CHUNK = 1 << 16


def decompress(data: bytes) -> bytes:
    """Return the bytes that ``compress`` packed into ``data``; :class:`DataError` if it is corrupt."""
    if len(data) < 3 or data[:2] != MAGIC:
        raise DataError("not a Unix-compress (.Z) stream: bad magic number")
    max_width = data[2] & _WIDTH_MASK
    block_mode = bool(data[2] & _BLOCK_MODE)
    if not _FIRST_WIDTH <= max_width <= 16:
        raise DataError(f"corrupt .Z stream: code width {max_width} is outside 9..16")
    payload = np.frombuffer(data, dtype=np.uint8, offset=3)
    first_entry = _CLEAR + 1 if block_mode else _CLEAR
    blocks = _code_blocks(payload, max_width, block_mode)
    return b"".join(_expand_block(codes, first_entry, 1 << max_width) for codes in blocks)


def _code_blocks(payload: np.ndarray, max_width: int, block_mode: bool) -> list[np.ndarray]:
    """Read every code, returning one array per block (the runs between CLEAR codes).

    Mirrors the decoder's table size (``free``, the next entry number) only to know how many codes
    each width covers: every code but the stream's first adds an entry, and a width ``w`` segment
    ends once ``free`` passes ``2**w - 1``.
    """
    padded = np.concatenate([payload, np.zeros(3, np.uint8)]).astype(np.uint32)
    total_bits = payload.size * 8
    blocks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    start, width = 0, _FIRST_WIDTH
    free = _CLEAR + 1 if block_mode else _CLEAR
    stream_start = True
    while (available := (total_bits - start) // width) > 0:
        at_top = width == max_width
        wanted = min(available, _TOP_WIDTH_CHUNK) if at_top else (1 << width) - free + int(stream_start)
        codes = _unpack(padded, start, width, min(wanted, available))
        clears = np.flatnonzero(codes == _CLEAR) if block_mode else np.zeros(0, dtype=np.int64)
        if len(clears):
            used = int(clears[0]) + 1
            current.append(codes[: used - 1])
            blocks.append(np.concatenate(current))
            current = []
            start, width, free = _next_group(start, used, width), _FIRST_WIDTH, _CLEAR
        else:
            current.append(codes)
            if wanted > available:
                break
            if at_top:  # the width stays: read on without padding
                start += codes.size * width
            else:
                free += codes.size - int(stream_start)
                start, width = _next_group(start, codes.size, width), width + 1
        stream_start = False
    blocks.append(np.concatenate(current) if current else np.zeros(0, np.int64))
    return blocks


def _unpack(padded: np.ndarray, start: int, width: int, count: int) -> np.ndarray:
    """``count`` little-endian ``width``-bit codes beginning at bit ``start``."""
    bits = start + np.arange(count, dtype=np.int64) * width
    byte, shift = bits >> 3, (bits & 7).astype(np.uint32)
    word = padded[byte] | (padded[byte + 1] << 8) | (padded[byte + 2] << 16)
    return ((word >> shift) & ((1 << width) - 1)).astype(np.int64)


def _next_group(start: int, codes_read: int, width: int) -> int:
    """Bit offset of the group boundary at or after the last code read (groups of eight codes)."""
    group = 8 * width
    used = codes_read * width
    return start + -(-used // group) * group


def _expand_block(codes: np.ndarray, first_entry: int, table_limit: int) -> bytes:
    """Decode one block: code ``i > 0`` defines entry ``first_entry + i - 1`` as string(code ``i-1``)
    plus the first byte of string(code ``i``), while the table has room."""
    if codes.size == 0:
        return b""
    steps = np.arange(codes.size, dtype=np.int64)
    newest = np.minimum(first_entry + steps - 1, table_limit - 1)  # entry defined at each step
    if codes[0] >= _CLEAR or np.any(codes[1:] > newest[1:]):
        raise DataError("corrupt .Z stream: a code refers to a string not yet defined")
    defined = min(codes.size - 1, table_limit - first_entry)
    size = first_entry + defined
    prefix = np.arange(size, dtype=np.int64)
    prefix[first_entry:] = codes[:defined]
    first_byte = _resolve_roots(prefix, first_entry)
    last_byte = np.arange(size, dtype=np.int64)
    last_byte[first_entry:] = first_byte[codes[1 : defined + 1]]
    lengths = _chain_lengths(prefix, first_entry)
    return _write_strings(codes, prefix, last_byte.astype(np.uint8), lengths, first_entry)


def _resolve_roots(prefix: np.ndarray, first_entry: int) -> np.ndarray:
    """The literal byte each entry's prefix chain ends in (its string's first byte), by pointer jumping."""
    root = prefix.copy()
    root[_CLEAR:first_entry] = 0  # the CLEAR slot is never referenced
    while np.any(root >= first_entry):
        root = root[root]
    return root


def _chain_lengths(prefix: np.ndarray, first_entry: int) -> np.ndarray:
    """String length of every table entry (1 for literals), by pointer jumping over prefix links."""
    size = prefix.size
    sentinel = size
    parent = np.append(prefix, sentinel)
    parent[:first_entry] = sentinel
    length = np.ones(size + 1, dtype=np.int64)
    length[sentinel] = 0
    while np.any(parent[:size] != sentinel):
        length = length + length[parent]
        parent = parent[parent]
    return length[:size]


def _write_strings(
    codes: np.ndarray, prefix: np.ndarray, last_byte: np.ndarray, lengths: np.ndarray, first_entry: int
) -> bytes:
    """Spell out every code's string: fill each from its end, one prefix link per pass."""
    ends = np.cumsum(lengths[codes]) - 1
    out = np.empty(int(ends[-1]) + 1, dtype=np.uint8)
    cursor, position = codes, ends
    while cursor.size:
        out[position] = last_byte[cursor]
        longer = cursor >= first_entry
        cursor, position = prefix[cursor[longer]], position[longer] - 1
    return out.tobytes()
