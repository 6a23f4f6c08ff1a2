"""peerstack: a peer-to-peer node for Python that speaks libp2p and IPFS."""

__version__ = "0.1.0"
