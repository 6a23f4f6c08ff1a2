"""Micro-benchmark: the Noise transport against the raw ChaCha20-Poly1305 ceiling.

Encrypts ``--mib`` MiB (1 GiB by default) with ``NoiseTransport.encrypt`` in calls of
``--frames`` full frames (65519 plaintext bytes each), and decrypts the wire bytes with
``NoiseTransport.decrypt`` fed in ``--read``-byte pieces that ignore frame boundaries, as socket
reads do. The anchors, in the same run, are the bare AEAD on the same 65519-byte frames with
nothing around them (no framing, no buffering): ``encrypt``/``decrypt``, which allocate a new
bytes object per frame, and ``encrypt_into``/``decrypt_into`` into one fixed buffer, the true
ceiling. "decrypt: NoiseTransport, net/ reads" replays the wire the way ``peerstack.net`` reads
it: reads of at most ``--read`` bytes, and when a frame is cut, its rest read straight into
``recv_buffer()`` (so reads end on frame boundaries again); "encrypt: encrypt_into" is how
``peerstack.net`` encrypts bulk output (into reusable buffers, no copy).

The machines are shared, so the work is cut into ``--rounds`` rounds that interleave the
contenders, and each one's best round is reported: a burst of load from elsewhere then hurts
one round, not one contender. Only the ratios are meaningful.

    .venv/bin/python bench/noise_frames.py                # 1 GiB
    .venv/bin/python bench/noise_frames.py --mib 256 --frames 1 --read 262144
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from peerstack.wire.noise import MAX_PLAINTEXT, TAG_LENGTH, NoiseTransport

MIB = 1024 * 1024
_nonce = struct.Struct("<4xQ").pack


def raw_encrypt(aead: ChaCha20Poly1305, plaintext: bytes, frames: int, calls: int) -> None:
    enc = aead.encrypt
    view = memoryview(plaintext)
    n = 0
    for _ in range(calls):
        for i in range(frames):
            enc(_nonce(n), view[i * MAX_PLAINTEXT : (i + 1) * MAX_PLAINTEXT], None)
            n += 1


def raw_encrypt_into(aead: ChaCha20Poly1305, plaintext: bytes, frames: int, calls: int) -> None:
    enc = aead.encrypt_into
    view = memoryview(plaintext)
    out = memoryview(bytearray(MAX_PLAINTEXT + TAG_LENGTH))
    n = 0
    for _ in range(calls):
        for i in range(frames):
            enc(_nonce(n), view[i * MAX_PLAINTEXT : (i + 1) * MAX_PLAINTEXT], None, out)
            n += 1


def raw_decrypt(aead: ChaCha20Poly1305, sealed: list[bytes], calls: int) -> None:
    dec = aead.decrypt
    for _ in range(calls):
        for i, frame in enumerate(sealed):
            dec(_nonce(i), frame, None)


def raw_decrypt_into(aead: ChaCha20Poly1305, sealed: list[bytes], calls: int) -> None:
    dec = aead.decrypt_into
    out = memoryview(bytearray(MAX_PLAINTEXT))
    for _ in range(calls):
        for i, frame in enumerate(sealed):
            dec(_nonce(i), frame, None, out)


class Transport:
    """Our transport on both ends; the receiver replays one recorded stretch of wire bytes."""

    def __init__(self, plaintext: bytes, calls: int, read: int) -> None:
        self.k1, self.k2 = os.urandom(32), os.urandom(32)
        self.sender = NoiseTransport(self.k1, self.k2)
        self.plaintext = plaintext
        stream = b"".join(self.sender.encrypt(plaintext) for _ in range(calls))
        self.wire_bytes = len(stream)
        view = memoryview(stream)
        self.wire = view
        self.read = read
        # Cut into socket-sized reads beforehand: that is the kernel's work, not ours.
        self.pieces = [view[i : i + read] for i in range(0, len(stream), read)]
        self.calls = calls

    def encrypt(self) -> None:
        encrypt = self.sender.encrypt
        plaintext = self.plaintext
        for _ in range(self.calls):
            encrypt(plaintext)

    def encrypt_into(self) -> None:
        encrypt_into = self.sender.encrypt_into
        plaintext = self.plaintext
        out = bytearray(NoiseTransport.sealed_size(len(plaintext)))
        for _ in range(self.calls):
            encrypt_into(plaintext, out)

    def decrypt_net(self) -> None:
        """Reads as net/ does them (see the module docstring)."""
        receiver = NoiseTransport(self.k2, self.k1)
        decrypt = receiver.decrypt
        recv_buffer = receiver.recv_buffer
        recv_done = receiver.recv_done
        wire = self.wire
        n = len(wire)
        read = self.read
        pos = 0
        got = 0
        while pos < n:
            target = recv_buffer() if receiver.pending else None
            if target is None:
                piece = wire[pos : pos + read]
                pos += len(piece)
                got += len(decrypt(piece))
            else:
                size = min(len(target), n - pos)
                target[:size] = wire[pos : pos + size]  # the kernel's copy, into place
                target.release()
                pos += size
                got += len(recv_done(size))
        if got != self.calls * len(self.plaintext) or receiver.pending:
            raise SystemExit(f"round trip lost bytes: {got}")

    def decrypt(self) -> None:
        # A fresh receiver: its nonces restart at zero, like the recorded stream's.
        receiver = NoiseTransport(self.k2, self.k1)
        decrypt = receiver.decrypt
        got = 0
        for piece in self.pieces:
            got += len(decrypt(piece))
        if got != self.calls * len(self.plaintext) or receiver.pending:
            raise SystemExit(f"round trip lost bytes: {got}")


def best_time(fn: Callable[[], None], results: list[float]) -> None:
    start = time.perf_counter()
    fn()
    results.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB of plaintext (default 1024)")
    parser.add_argument("--frames", type=int, default=16, help="full frames per encrypt call")
    parser.add_argument(
        "--read", type=int, default=65537, help="bytes per decrypt call (net/ reads 65537)"
    )
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    args = parser.parse_args()
    frames = max(1, args.frames)
    rounds = max(1, args.rounds)
    plaintext = os.urandom(frames * MAX_PLAINTEXT)
    calls = max(1, args.mib * MIB // len(plaintext) // rounds)
    per_round = calls * len(plaintext)

    aead = ChaCha20Poly1305(os.urandom(32))
    view = memoryview(plaintext)
    sealed = [
        aead.encrypt(_nonce(i), view[i * MAX_PLAINTEXT : (i + 1) * MAX_PLAINTEXT], None)
        for i in range(frames)
    ]
    ours = Transport(plaintext, calls, args.read)
    contenders: dict[str, Callable[[], None]] = {
        "encrypt: NoiseTransport": ours.encrypt,
        "encrypt: encrypt_into": ours.encrypt_into,
        "encrypt: AEAD encrypt": lambda: raw_encrypt(aead, plaintext, frames, calls),
        "encrypt: AEAD encrypt_into": lambda: raw_encrypt_into(aead, plaintext, frames, calls),
        "decrypt: NoiseTransport": ours.decrypt,
        "decrypt: NoiseTransport, net/ reads": ours.decrypt_net,
        "decrypt: AEAD decrypt": lambda: raw_decrypt(aead, sealed, calls),
        "decrypt: AEAD decrypt_into": lambda: raw_decrypt_into(aead, sealed, calls),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            best_time(fn, times[name])

    print(
        f"noise transport: {rounds} x {per_round / MIB:.0f} MiB plaintext in "
        f"{MAX_PLAINTEXT}-byte frames, {frames} frames per encrypt call, "
        f"{args.read}-byte decrypt reads; best round of each"
    )
    rates = {name: per_round / min(t) / 1e6 for name, t in times.items()}
    for name, mb_s in rates.items():
        print(f"  {name:38}{mb_s:8.0f} MB/s")
    for op, net_path in (("encrypt", "encrypt_into"), ("decrypt", "NoiseTransport, net/ reads")):
        for label in ("NoiseTransport", net_path):
            ours_rate = rates[f"{op}: {label}"]
            print(
                f"  {op} ratio ({label}): {ours_rate / rates[f'{op}: AEAD {op}_into']:.2f} of "
                f"the ceiling ({op}_into), {ours_rate / rates[f'{op}: AEAD {op}']:.2f} of "
                f"plain {op}()"
            )
    overhead = ours.wire_bytes - per_round
    print(f"  wire overhead: {overhead / per_round * 100:.3f}%")


if __name__ == "__main__":
    main()
