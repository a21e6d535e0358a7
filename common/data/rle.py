"""SIIM-ACR run-length encoding: the competition's *relative*, column-major format.

A mask of shape (height, width) is flattened column-major (Fortran order: down the first
column, then the second, ...). The encoding is a list of pairs ``start length`` where each
``start`` is relative to the end of the previous run (the first one to pixel 0). An empty
mask is written ``-1``. ``decode_rle(encode_rle(m)) == m`` for every binary mask ``m``.

Written by hand because no MONAI/pydicom function speaks this competition format.
"""

from __future__ import annotations

import numpy as np

EMPTY_RLE = "-1"


class RLEError(ValueError):
    """A run-length string that cannot be decoded for the given mask size."""


def parse_rle(rle: str) -> np.ndarray:
    """Parse a non-empty run-length string to its integer tokens; raise RLEError if malformed."""
    tokens = rle.split()
    try:
        values = np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError as e:
        raise RLEError(f"non-integer token in run-length string: {e}") from None
    if len(values) % 2:
        raise RLEError(f"odd number of tokens ({len(values)}): runs must be 'start length' pairs")
    if (values < 0).any():
        raise RLEError("negative start or length in run-length string")
    if len(values) == 0:
        raise RLEError("empty run-length string (an empty mask is written '-1')")
    if (values[1::2] == 0).any():
        raise RLEError("zero-length run")
    return values


def is_empty_rle(rle: str) -> bool:
    """True for the competition's empty-mask marker (``-1``, any surrounding space)."""
    return rle.strip() == EMPTY_RLE


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """Decode one relative, column-major run-length string to a uint8 {0,1} mask (height, width)."""
    flat = np.zeros(height * width, dtype=np.uint8)
    if is_empty_rle(rle):
        return flat.reshape((height, width), order="F")
    values = parse_rle(rle)
    starts_rel, lengths = values[0::2], values[1::2]
    # absolute start of run i = sum of all previous (start_rel + length) + start_rel_i
    ends = np.cumsum(starts_rel + lengths)
    starts = ends - lengths
    if ends[-1] > flat.size:
        raise RLEError(
            f"runs go past the end of the {height}x{width} image "
            f"(the last run ends at pixel {int(ends[-1])} of {flat.size})"
        )
    for s, e in zip(starts, ends, strict=True):
        flat[s:e] = 1
    return flat.reshape((height, width), order="F")


def encode_rle(mask: np.ndarray) -> str:
    """Encode a binary mask (height, width) to the relative, column-major format (``-1`` if empty)."""
    on = np.flatnonzero(np.asarray(mask).T.reshape(-1))  # column-major order via the transpose
    if on.size == 0:
        return EMPTY_RLE
    # work on the (few) foreground indices, not the whole mask: a run breaks where indices jump
    breaks = np.flatnonzero(np.diff(on) > 1)
    starts = on[np.concatenate([[0], breaks + 1])]
    ends = on[np.concatenate([breaks, [on.size - 1]])] + 1
    lengths = ends - starts
    previous_ends = np.concatenate([[0], ends[:-1]])
    relative = starts - previous_ends
    return " ".join(f"{r} {n}" for r, n in zip(relative, lengths, strict=True))


def decode_union(rles: list[str], height: int, width: int) -> np.ndarray:
    """Decode several rows of one image and return their union (the competition's rule)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for rle in rles:
        mask |= decode_rle(rle, height, width)
    return mask
