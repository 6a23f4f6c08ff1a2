"""Bitswap 1.2: the wire messages, the server's decision engine, client sessions, the service."""
