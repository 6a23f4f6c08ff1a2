"""Sans-IO wire protocol state machines: bytes in, events and bytes out. No sockets, no clock."""
