"""A Bitswap seeder in its own process, for the fault-tolerance tests (killed with SIGKILL).

    python -m tests.content.fault_seeder <repo> <file> <chunk_size> <max_links>

Imports ``file`` into the blockstore at ``repo`` (CIDv1, raw leaves, the given chunking), serves
it over Bitswap on 127.0.0.1, prints one JSON line {"peer_id", "addr", "cid", "blocks"} and
serves until its stdin closes or it is killed. A seeder restarted on the same repo finds its
blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from peerstack.content.bitswap.service import Bitswap
from peerstack.content.blockstore import Blockstore, FsyncPolicy
from peerstack.content.importer import ImportProfile
from peerstack.core.identity import PrivateKey
from peerstack.host.host import BasicHost


async def serve(repo: Path, src: Path, profile: ImportProfile) -> None:
    host = BasicHost(PrivateKey.generate(), listen_addrs=["/ip4/127.0.0.1/tcp/0"])
    with Blockstore(repo, FsyncPolicy.NEVER) as store:
        bitswap = Bitswap(host, store)
        await bitswap.start()
        await host.start()
        try:
            added = await bitswap.add(src, profile, provide=False)
            blocks = sum(1 for _ in store.iter_keys())
            line = {
                "peer_id": str(host.peer_id),
                "addr": str(host.listen_addrs()[0]),
                "cid": str(added.cid),
                "blocks": blocks,
            }
            print(json.dumps(line), flush=True)
            await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
        finally:
            await bitswap.stop()
            await host.close()


def main() -> None:
    repo, src, chunk, links = sys.argv[1:5]
    profile = ImportProfile(chunk_size=int(chunk), max_links=int(links))
    asyncio.run(serve(Path(repo), Path(src), profile))


if __name__ == "__main__":
    main()
