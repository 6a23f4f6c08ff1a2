"""Every verb the CLI and the HTTP API offer, as one function over a running ``Node``.

An operation takes JSON-shaped arguments and returns a JSON-shaped result; long ones report
progress through ``emit`` (``{"event": "progress", ...}``). The same functions run in-process
for a one-shot command and inside the daemon behind the API, so both paths behave alike.
Paths are absolute by the time they get here (the CLI resolves them where the user typed them).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peerstack.errors import UsageError

if TYPE_CHECKING:  # the node (the whole network stack) loads only where a node runs
    from peerstack.node import Node, TransferProgress

Json = dict[str, Any]
Emit = Callable[[Json], None]
Operation = Callable[["Node", Mapping[str, Any], Emit], Awaitable[Json]]

#: Operations that talk to the network (one-shot runs bootstrap first for these).
NETWORK_OPS = frozenset(
    {
        "dht.find-peer",
        "dht.put",
        "dht.get",
        "dht.provide",
        "dht.find-providers",
        "name.publish",
        "name.resolve",
        "add",
        "get",
        "cat",
        "pin.add",
    }
)


def _str(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise UsageError(f"missing or bad argument {name!r}")
    return value


def _opt_num(args: Mapping[str, Any], name: str) -> float | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise UsageError(f"argument {name!r} must be a non-negative number")
    return float(value)


def _wait(args: Mapping[str, Any]) -> float | None:
    """The ``timeout`` argument: seconds to wait for content; 0 or absent waits forever."""
    return _opt_num(args, "timeout") or None


def _opt_int(args: Mapping[str, Any], name: str) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"argument {name!r} must be a non-negative integer")
    return value


def progress_event(p: TransferProgress) -> Json:
    return {"event": "progress", **asdict(p)}


async def dht_find_peer(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    found = await node.dht.find_peer(_str(args, "peer"))
    return {
        "peer_id": str(found.peer_id),
        "addrs": [str(a) for a in found.addrs],
        "hops": found.hops,
        "requests": found.requests,
    }


async def dht_put(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    value = base64.b64decode(_str(args, "value_b64"))
    peers = await node.dht.put(_str(args, "key"), value)
    return {"key": args["key"], "peers": peers}


async def dht_get(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    value = await node.dht.get(_str(args, "key"))
    return {"key": args["key"], "value_b64": base64.b64encode(value).decode()}


async def dht_provide(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    peers = await node.dht.provide(_str(args, "cid"))
    return {"cid": args["cid"], "peers": peers}


async def dht_find_providers(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    infos = await node.dht.find_providers(_str(args, "cid"), _opt_int(args, "count"))
    return {
        "cid": args["cid"],
        "providers": [
            {"peer_id": str(i.peer_id), "addrs": [str(a) for a in i.addrs]} for i in infos
        ],
        "hops": node.dht.last_lookup.hops,
    }


async def name_publish(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    lifetime = _opt_num(args, "lifetime")
    name, seq = await node.name_publish(
        _str(args, "value"), lifetime=lifetime if lifetime else 48 * 3600.0
    )
    return {"name": str(name), "value": _ipfs_path(args["value"]), "sequence": seq}


def _ipfs_path(value: str) -> str:
    return value if value.startswith("/") else f"/ipfs/{value}"


async def name_resolve(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    name = _str(args, "name")
    return {"name": name, "value": await node.name_resolve(name)}


async def add(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    path = Path(_str(args, "path"))
    if not path.is_absolute():
        raise UsageError(f"path {path} must be absolute")
    cid = await node.add(
        path,
        recursive=bool(args.get("recursive")),
        profile=str(args.get("profile") or "default"),
        pin=bool(args.get("pin", True)),
        provide=args.get("provide") if isinstance(args.get("provide"), str) else None,
        progress=lambda p: emit(progress_event(p)),
    )
    return {"cid": str(cid), "path": str(path)}


async def get(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    dest = Path(_str(args, "dest"))
    if not dest.is_absolute():
        raise UsageError(f"output path {dest} must be absolute")
    result = await node.get(
        _str(args, "cid"),
        dest,
        progress=lambda p: emit(progress_event(p)),
        find_timeout=_wait(args),
        idle_timeout=_wait(args),
    )
    return {
        "cid": str(result.root),
        "path": str(dest),
        "blocks": result.blocks,
        "bytes": result.bytes,
        "fetched_bytes": result.fetched_bytes,
    }


async def pin_add(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    cid = await node.pin_add(
        _str(args, "cid"),
        recursive=bool(args.get("recursive", True)),
        find_timeout=_wait(args),
        idle_timeout=_wait(args),
    )
    return {"cid": str(cid), "pinned": True}


async def pin_rm(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    cid = await node.pin_rm(_str(args, "cid"))
    return {"cid": str(cid), "pinned": False}


async def pin_ls(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    pins = await node.pin_ls()
    return {"pins": [{"cid": str(c), "kind": k.value} for c, k in pins]}


async def repo_gc(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    res = await node.repo_gc()
    return {
        "removed": res.removed,
        "freed_bytes": res.freed_bytes,
        "kept": res.kept,
        "refs_dropped": res.refs_dropped,  # their files are left alone
        "refs_kept": res.refs_kept,
    }


async def repo_verify(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    rep = await node.repo_verify(remove_damaged=bool(args.get("remove_damaged")))
    return {
        "ok": rep.ok,
        "checked": rep.checked,
        "damaged": rep.damaged,
        "unreadable": rep.unreadable,
        "foreign": rep.foreign,
        "missing_pinned": rep.missing_pinned,
        "checked_refs": rep.checked_refs,
        "damaged_refs": [
            {
                "key": d.key,
                "path": d.ref.path,
                "offset": d.ref.offset,
                "length": d.ref.length,
                "why": d.why,
            }
            for d in rep.damaged_refs
        ],
    }


async def repo_stat(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    return await node.repo_stat()


async def node_id(node: Node, args: Mapping[str, Any], emit: Emit) -> Json:
    return {"peer_id": str(node.peer_id), "addrs": [str(a) for a in node.addrs]}


OPERATIONS: dict[str, Operation] = {
    "id": node_id,
    "dht.find-peer": dht_find_peer,
    "dht.put": dht_put,
    "dht.get": dht_get,
    "dht.provide": dht_provide,
    "dht.find-providers": dht_find_providers,
    "name.publish": name_publish,
    "name.resolve": name_resolve,
    "add": add,
    "get": get,
    "pin.add": pin_add,
    "pin.rm": pin_rm,
    "pin.ls": pin_ls,
    "repo.gc": repo_gc,
    "repo.verify": repo_verify,
    "repo.stat": repo_stat,
}


def cat_args(args: Mapping[str, Any]) -> tuple[str, int, int | None, float | None]:
    """The arguments of ``cat`` (it streams bytes, so it is not in ``OPERATIONS``)."""
    return (
        _str(args, "cid"),
        _opt_int(args, "offset") or 0,
        _opt_int(args, "length"),
        _wait(args),
    )
