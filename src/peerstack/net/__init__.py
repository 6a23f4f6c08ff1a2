"""The asyncio shell that drives the wire state machines over TCP."""
