"""Registry commands beyond the daily path: ``status``, ``revoke`` and ``reissue``.

Kept apart from :mod:`tracemark.cli` (which mounts them) so that each stays a short page; none of
them imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

HomeOpt = typer.Option(None, "--home", envvar="TRACEMARK_HOME", help="Registry folder (default ~/.tracemark).")


def status_cmd(home: Optional[Path] = HomeOpt,
               as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead.")) -> None:
    """Where the registry is, whether the master key fits it, its integrity and what it holds.

    Example: tracemark status
    """
    from tracemark.registry import Registry

    reg = Registry(home)
    st = reg.status()
    pending = [dict(p) for p in reg.pending_copies()]
    if as_json:
        print(json.dumps({**st, "pending_copies": pending}))
        return
    for k in ("home", "owner", "created", "master_key", "registry", "schema", "integrity", "datasets", "licensees",
              "copies", "pending", "shadows", "audits"):
        console.print(f"{k:>11}: {st[k]}", highlight=False)
    for p in pending:
        err_console.print(f"[yellow]interrupted:[/] copy {p['id']} of {p['dataset']} for {p['licensee']} was never "
                          "written; rerun the same `tracemark protect` command", highlight=False, soft_wrap=True)


def revoke_cmd(licensee: str = typer.Argument(..., metavar="LICENSEE", help="Whose copy to revoke."),
               dataset: Optional[str] = typer.Option(None, "--dataset", help="The copy's dataset (needed when the "
                                                     "licensee holds several)."),
               reason: str = typer.Option("", "--reason", help="Recorded with the revocation."),
               home: Optional[Path] = HomeOpt) -> None:
    """Mark a licensee's copy revoked (the licence ended, or a new copy replaces it).

    The row stays in the registry and the copy is still traced: a leak of a revoked copy is still
    that licensee's. The licensee may then be issued a new copy (with a new key).

    Example: tracemark revoke acme --reason "licence ended 2026-12-31"
    """
    from tracemark.materialize import find_copy
    from tracemark.registry import Registry

    reg = Registry(home)
    copy = find_copy(reg, licensee, dataset)
    reg.revoke(copy.dataset, licensee, reason)
    console.print(f"Revoked copy {copy.id} of [bold]{copy.dataset}[/] held by [bold]{licensee}[/]; it is kept and "
                  "still traced.")


def reissue_cmd(licensee: str = typer.Argument(..., metavar="LICENSEE", help="Who receives the new copy."),
                out: Path = typer.Option(..., "--out", "-o", help="Output folder for the new copy (must not exist)."),
                dataset: Optional[str] = typer.Option(None, "--dataset", help="The copy's dataset (needed when the "
                                                      "licensee holds several)."),
                data: Optional[Path] = typer.Option(None, "--data", help="The original dataset (default: the folder "
                                                    "recorded when the copy was issued)."),
                workers: Optional[int] = typer.Option(None, help="Worker processes for marking (default: up to 2)."),
                home: Optional[Path] = HomeOpt) -> None:
    """Issue a licensee a new copy with a new key and the same options; their current copy is revoked.

    Use it when a copy was sent to the wrong place, or a licensee must get a fresh one. The new copy
    is the next generation of (dataset, licensee); the old one stays in the registry, still traced.

    Example: tracemark reissue acme --out copies/acme-2
    """
    from tracemark.fsutil import check_output_dir
    from tracemark.protect import reissue
    from tracemark.registry import Registry

    check_output_dir(out, "--out", home=home, new=False)
    reg = Registry(home)
    res = reissue(reg, licensee, out, dataset=dataset, data_dir=data, workers=workers)
    console.print(f"Reissued: copy {res.copy_id} of [bold]{res.dataset}[/] to [bold]{res.licensee}[/] -> {res.out_dir} "
                  f"({res.n_marked}/{res.n_samples} samples marked, new key); the previous copy is revoked.")
