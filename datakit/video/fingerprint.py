"""A perceptual fingerprint of footage: one 64-bit DCT hash per sampled frame.

Re-uploads and copies of one recording (other codec, container, resolution, bitrate, trim) keep the
coarse picture: the gray frame shrunk to 32x32 and its 8x8 lowest DCT frequencies change little under
re-encoding and scaling, while another scene changes about half of the 64 bits. The hash is the sign of
each of those 64 coefficients against their median (the classic "pHash" construction), so two frames are
compared by the Hamming distance of two integers. The per-video job hashes the frames it already decodes
for the face detector (no second decode); :mod:`datakit.passes.contexts` matches the hashes across videos.

Flat frames (black, fades, a single colour) carry no picture to recognise and are equal across unrelated
videos, so they get no hash (:func:`frame_hash` returns None).
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIDE = 32  #: the gray frame is shrunk to HASH_SIDE x HASH_SIDE before the DCT
DCT_SIDE = 8  #: the DCT_SIDE x DCT_SIDE lowest frequencies give the 64 bits
#: a 32x32 gray frame whose pixels vary less than this (std, 0..255 levels) is flat: no hash. A black or
#: one-colour frame measures 0; every frame the build samples from the shipped footage measures >= 18 (the
#: dark wide stage of hamilton_white_house.mp4; median per video 31-72), so only near-flat frames (the last
#: steps of a fade) are left out.
FLAT_STD = 4.0
_WEIGHTS = (1 << np.arange(DCT_SIDE * DCT_SIDE, dtype=np.uint64)).astype(np.uint64)


def frame_hash(frame_bgr: np.ndarray) -> int | None:
    """The 64-bit DCT hash of a BGR (or gray) frame as a signed int64 value; None for a flat frame."""
    gray = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    small = cv2.resize(gray, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    if float(small.std()) < FLAT_STD:
        return None
    low = cv2.dct(small)[:DCT_SIDE, :DCT_SIDE].reshape(-1)
    bits = (low > np.median(low)).astype(np.uint64)
    return int(np.sum(bits * _WEIGHTS, dtype=np.uint64).view(np.int64))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (len(a), len(b)) of two int64 hash arrays, 0..64."""
    x = np.bitwise_xor(a.astype(np.int64)[:, None], b.astype(np.int64)[None, :]).view(np.uint64)
    return _popcount(x)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Bits set in each uint64 (SWAR count: numpy < 2.0 has no bitwise_count)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)
