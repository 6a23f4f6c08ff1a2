"""Real BasicHosts on 127.0.0.1 (fixtures shared with the other folder, in tests/hostkit.py)."""

from tests.hostkit import eventually, make_host, pytest_asyncio_loop_factories

__all__ = ["eventually", "make_host", "pytest_asyncio_loop_factories"]
