"""The Kademlia keyspace: 256-bit XOR distance over sha256 of keys.

Every key (a PeerId's bytes, a record key, a provider multihash) is hashed with sha256 before
any XOR: forgetting that is a classic interop bug. Keys are kept as Python ints, on which XOR
and ``bit_length`` are fast.
"""

from __future__ import annotations

import hashlib

KEY_BITS = 256


def kad_key(data: bytes) -> int:
    """The position of ``data`` in the keyspace: sha256 read as a big-endian integer."""
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def common_prefix_len(a: int, b: int) -> int:
    """How many leading bits ``a`` and ``b`` share (256 when equal)."""
    return KEY_BITS - (a ^ b).bit_length()
