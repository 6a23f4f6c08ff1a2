"""The host: protocol handlers, streams to peers, peerstore, connection manager, limits."""
