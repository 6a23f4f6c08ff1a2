"""The `peerstack` command line."""
