"""Content-addressed storage and exchange: blockstore, dag-pb, UnixFS import/export, Bitswap."""
