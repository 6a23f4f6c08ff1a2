"""``peerstack id``: our PeerId and public key."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from peerstack.cli.common import console, json_option, print_json, repo_option
from peerstack.core.peer_id import PeerId
from peerstack.repo import Repo


@click.command("id")
@repo_option
@json_option
def id_command(repo: Path | None, as_json: bool) -> None:
    """Show this node's PeerId and public key (creating the repo if needed)."""
    r = Repo.open(repo)
    key = r.identity()
    peer = PeerId.from_public_key(key.public_key)
    public = base64.b64encode(key.public_key.to_protobuf()).decode()
    if as_json:
        print_json(
            {
                "peer_id": str(peer),
                "public_key": public,
                "key_type": key.public_key.key_type.name,
                "repo": str(r.path),
            }
        )
        return
    out = console()
    out.print(f"[bold]PeerId[/bold]      {peer}")
    out.print(f"[bold]Public key[/bold]  {public} ({key.public_key.key_type.name})")
    out.print(f"[bold]Repo[/bold]        {r.path}")
