"""Micro-benchmark: bytes through two in-memory Yamux sessions, against a plain-copy anchor.

One stream, the sender writes ``--chunk``-byte application buffers with ``send_data``, drains
``data_to_send``, the receiver parses with ``receive_data``, "reads" every DataReceived with
``consumed`` and its window updates flow back: exactly the per-byte work the asyncio layer does
around the muxer, without sockets or encryption.

The anchor in the same run does the copies that are unavoidable whatever the muxer does (join a
header with the payload on the way out, slice the payload out on the way in). On a shared
machine only the ratio of the two is meaningful.

"noise-shaped" runs drain the sender 65519 bytes at a time (``data_to_send(max_bytes)``, one Noise
frame of plaintext) into a reused scratch buffer and feed the receiver those pieces, as the
connection layer does; "whole" runs hand over everything queued in one buffer. Whole runs with
1 MiB frames allocate a fresh 1 MiB ``bytes`` per frame, which glibc may serve with mmap() and
page faults: expect them (and the 1 MiB anchor) to swing by 10x between runs.

    .venv/bin/python bench/yamux_frames.py            # 1 GiB
    .venv/bin/python bench/yamux_frames.py --mib 256
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from peerstack.wire.yamux import DataReceived, YamuxConfig, YamuxSession

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    seconds: float
    nbytes: int
    frames: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


NOISE_PLAINTEXT = 65519


def run_yamux(
    name: str, total: int, chunk: int, config: YamuxConfig, *, noise_shaped: bool = False
) -> Result:
    """Push ``total`` bytes through client -> server on one stream; return the timing."""
    clock = time.perf_counter
    client = YamuxSession(is_client=True, config=config, now=clock())
    server = YamuxSession(is_client=False, config=config, now=clock())
    # Measure an RTT so that window auto-tuning has something to compare with.
    client.ping(clock())
    server.receive_data(client.data_to_send(), clock())
    client.receive_data(server.data_to_send(), clock())
    sid = client.open_stream()
    server.receive_data(client.data_to_send(), clock())
    payload = bytes(range(256)) * (chunk // 256)
    view = memoryview(payload)
    sent = received = frames = 0
    offset = 0  # how much of the current application chunk was taken
    scratch = bytearray(NOISE_PLAINTEXT)
    scratch_view = memoryview(scratch)
    start = clock()
    while received < total:
        if sent < total:
            n = client.send_data(sid, view[offset:] if offset else payload)
            sent += n
            offset = (offset + n) % chunk
        now = clock()
        while True:
            if noise_shaped:
                # Like decrypting into a fresh bytes object per Noise frame.
                got = client.data_to_send_into(scratch)
                wire = bytes(scratch_view[:got])
            else:
                wire = client.data_to_send()
            if not wire:
                break
            for event in server.receive_data(wire, now):
                if type(event) is DataReceived:
                    size = len(event.data)
                    received += size
                    frames += 1
                    server.consumed(sid, size, now)
            if not noise_shaped:
                break
        back = server.data_to_send()
        if back:
            client.receive_data(back, clock())
    return Result(name, clock() - start, received, frames)


def run_anchor(total: int, chunk: int, frame: int) -> Result:
    """The two copies any framing costs: header + payload joined, payload sliced back out."""
    clock = time.perf_counter
    payload = bytes(range(256)) * (chunk // 256)
    view = memoryview(payload)
    header = bytes(12)
    done = frames = 0
    start = clock()
    while done < total:
        for off in range(0, chunk, frame):
            wire = b"".join((header, view[off : off + frame]))
            data = bytes(memoryview(wire)[12:])
            done += len(data)
            frames += 1
    return Result(f"anchor: join+slice, {frame // 1024} KiB frames", clock() - start, done, frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB to push per run (default 1024)")
    parser.add_argument("--chunk", type=int, default=1024, help="KiB per send_data call")
    args = parser.parse_args()
    total = args.mib * MIB
    chunk = args.chunk * 1024

    big = YamuxConfig(initial_window=16 * MIB)
    results = [
        run_anchor(total, chunk, 128 * 1024),
        run_yamux("yamux whole, default (256 KiB window)", total, chunk, YamuxConfig()),
        run_yamux("yamux noise-shaped, default", total, chunk, YamuxConfig(), noise_shaped=True),
        run_yamux("yamux noise-shaped, 16 MiB window", total, chunk, big, noise_shaped=True),
        run_anchor(total, chunk, MIB),
        run_yamux("yamux whole, 16 MiB window, 1 MiB frames", total, chunk, big),
        run_yamux(
            "yamux whole, 16 MiB window, 64 KiB frames",
            total,
            chunk,
            YamuxConfig(initial_window=16 * MIB, max_frame_payload=64 * 1024),
        ),
        # Small application writes: per-frame Python work dominates here.
        run_anchor(total // 4, 16 * 1024, 16 * 1024),
        run_yamux("yamux, 16 KiB send_data calls", total // 4, 16 * 1024, YamuxConfig()),
    ]
    anchor = results[0].mb_per_s
    print(f"{args.mib} MiB per run, {args.chunk} KiB per send_data call")
    print(f"{'run':<44} {'MB/s':>9} {'events':>8} {'vs 128K anchor':>15}")
    for r in results:
        print(f"{r.name:<44} {r.mb_per_s:>9.0f} {r.frames:>8} {r.mb_per_s / anchor:>15.2f}")
    small_anchor, small = results[-2], results[-1]
    print(
        f"16 KiB writes: yamux {small.frames / small.seconds:,.0f} frames/s, "
        f"{small.mb_per_s / small_anchor.mb_per_s:.2f} of its anchor"
    )


if __name__ == "__main__":
    main()
