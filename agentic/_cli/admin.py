"""``agentic admin ...``: upkeep of what agentic leaves on the servers it uses."""

from __future__ import annotations

from typing import Annotated

import typer

from ..stores import prune_redis_functions
from ._common import (
    ConfigOption,
    JsonOption,
    StoreOption,
    handled,
    print_json,
    stdout,
    store_config,
    warn,
)
from ._help import App

admin_app = App(help="Upkeep of the servers agentic uses.")


@admin_app.command("prune-functions")
@handled
def prune_functions(
    config_path: ConfigOption = None,
    store_url: StoreOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only print what would be deleted.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Delete the Redis Functions libraries (agentic_<sha1>) of agentic versions
    other than this one from a Redis server, keeping this version's."""
    cfg = store_config(config_path, store_url)
    pruned = prune_redis_functions(cfg.store_url, dry_run=dry_run)
    if pruned.deleted:
        warn(
            "an agentic version other than this one still running against this Redis"
            " loads its libraries again at its next call: pruning is safe, and costs"
            " that version one load"
        )
    if json_output:
        print_json({"kept": pruned.kept, "deleted": pruned.deleted, "dry_run": dry_run})
        return
    out = stdout()
    for name in pruned.kept:
        out.print(f"kept {name}", highlight=False)
    for name in pruned.deleted:
        out.print(f"{'would delete' if dry_run else 'deleted'} {name}", highlight=False)
    summary = f"{len(pruned.kept)} kept, {len(pruned.deleted)}"
    if dry_run:
        out.print(f"{summary} to delete (dry run: nothing deleted)", highlight=False)
    else:
        out.print(f"{summary} deleted", highlight=False)
