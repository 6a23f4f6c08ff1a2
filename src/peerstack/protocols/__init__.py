"""Small libp2p protocols: identify, ping, perf, echo."""
