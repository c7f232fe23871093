"""The ids the source systems write: fixed-width strings built as raw bytes, from numbers
scrambled so that an id does not reveal the canonical customer number."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ._parameters import STORES_PER_ZONE, TIMEZONES

ORDER_SLOTS = 100_000  # order keys are customer number * ORDER_SLOTS + the customer's order rank
ORDER_ID_BITS = 40


def scramble(numbers: np.ndarray, bits: int, multiplier: int, offset: int) -> np.ndarray:
    """A bijection of [0, 2**bits), so that source ids are unique but do not reveal the canonical
    customer number: rounds of (odd multiply + add) mod 2**bits and xor-shift, each invertible."""
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(bits // 2)
    x = np.asarray(numbers, dtype=np.uint64) & mask
    with np.errstate(over="ignore"):
        for _ in range(3):
            x = (x * np.uint64(multiplier | 1) + np.uint64(offset)) & mask
            x ^= x >> shift
    return x


def format_ids(prefix: str, numbers: np.ndarray, width: int, base: int = 10, valid=None) -> pa.Array:
    """Fixed-width ids such as 'C0000042' for many numbers at once, built as raw bytes (a Python
    f-string per row is far too slow for tens of millions of rows)."""
    alphabet = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    x = np.asarray(numbers).astype(np.uint64)
    n = x.size
    head = len(prefix)
    buf = np.empty((n, head + width), dtype=np.uint8)
    buf[:, :head] = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    rest = x.copy()
    for pos in range(head + width - 1, head - 1, -1):
        buf[:, pos] = alphabet[(rest % np.uint64(base)).astype(np.intp)]
        rest //= np.uint64(base)
    if n and rest.any():
        raise ValueError(f"{prefix} ids do not fit in {width} digits")
    offsets = np.arange(0, (n + 1) * (head + width), head + width, dtype=np.int64)
    if valid is None:
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(buf.ravel())).cast(
            pa.string()
        )
    valid = np.asarray(valid, dtype=bool)
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    array = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(buf.ravel()), bitmap, int(n - valid.sum())
    )
    return array.cast(pa.string())


def order_ids(keys: np.ndarray, valid: np.ndarray) -> pa.Array:
    scrambled = scramble(np.where(valid, keys, 0), ORDER_ID_BITS, 0x9E3779B97F4B, 0x2545F491)
    return format_ids("O", scrambled, 13, valid=valid)


STORE_IDS = format_ids("S", np.arange(1, len(TIMEZONES) * STORES_PER_ZONE + 1), 3)
