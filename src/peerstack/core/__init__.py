"""Core data types: identity, PeerId, multiaddr, varint, multihash, CID, protobuf messages."""
