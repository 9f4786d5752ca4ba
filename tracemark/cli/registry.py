"""Commands over the registry: ``init``, ``status``, ``licensees``, ``copies``, ``revoke``,
``backup``, ``restore``.

Each is a thin layer over :class:`tracemark.registry.database.Registry` (or
:func:`tracemark.registry.restore.restore`), imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tracemark.cli.command import PANEL_PROTECT, PANEL_REGISTRY, Commands
from tracemark.cli.options import ForceJsonOpt, HomeOpt, JsonlOpt, ListJsonOpt
from tracemark.cli.output import cell, check_json_out, console, emit_json, err_console, print_table

app = Commands(panel=PANEL_REGISTRY)


@app.command(panel=PANEL_PROTECT, examples=["tracemark init --owner \"Example Photo Archive\"",
                                            "tracemark init --home ~/archive-registry"])
def init(home: HomeOpt = None, owner: str = typer.Option("owner", help="Owner name.")) -> None:
    """Create the registry and a new master key (mode 0600). Refuses to overwrite."""
    from tracemark.registry.database import Registry

    reg = Registry.init(home, owner)
    console.print(f"Initialised tracemark registry in [bold]{reg.home}[/] (master key: {reg.key_path}, mode 0600).")
    console.print("Back up the master key: every licensee key is derived from it. Back up the registry too "
                  "(`tracemark backup FILE`): it is the only record of who got which copy.")


@app.command("status", examples=["tracemark status", "tracemark status --json"])
def status_cmd(home: HomeOpt = None,
               as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead.")) -> None:
    """Where the registry is, whether the master key fits it, its integrity and what it holds."""
    from tracemark.registry.database import Registry

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


@app.command(examples=["tracemark licensees", "tracemark licensees --json -"])
def licensees(home: HomeOpt = None, json_out: ListJsonOpt = None,
              jsonl: JsonlOpt = False, force: ForceJsonOpt = False) -> None:
    """List licensees and how many copies each holds."""
    from tracemark.registry.database import Registry

    check_json_out(json_out, force, home)
    reg = Registry(home)
    rows = [{"id": r["id"], "licensee": r["name"], "copies": r["n_copies"], "since": r["created"]}
            for r in reg.licensees()]
    if jsonl:
        for r in rows:
            print(json.dumps(r))
        return
    if json_out is not None:
        emit_json(rows, json_out, force)
        if str(json_out) == "-":
            return
    print_table(["id", "licensee", "copies", "since"], [[cell(v) for v in r.values()] for r in rows],
                numeric=["id", "copies", "since"])


@app.command(examples=["tracemark copies --dataset photos", "tracemark copies --jsonl"])
def copies(dataset: Optional[str] = typer.Option(None, help="Only this dataset."), home: HomeOpt = None,
           json_out: ListJsonOpt = None, jsonl: JsonlOpt = False, force: ForceJsonOpt = False) -> None:
    """List issued copies: dataset, licensee, scheme, strategy, rate, marked samples, key id."""
    from tracemark.registry.database import Registry

    check_json_out(json_out, force, home)
    reg = Registry(home)
    rows = [{"id": c.id, "dataset": c.dataset, "licensee": c.licensee, "scheme": c.scheme, "strategy": c.strategy,
             "rate": c.rate, "marked": c.n_marked, "key_id": c.key_id, "issued": c.created,
             "status": c.status if not c.generation else f"{c.status} (gen {c.generation})", "path": c.out_path or ""}
            for c in reg.copies(dataset)]
    if jsonl:
        for r in rows:
            print(json.dumps(r))
    elif json_out is not None:
        emit_json(rows, json_out, force)
    if jsonl or (json_out is not None and str(json_out) == "-"):
        _print_pending(reg, dataset)
        return
    headers = ["id", "dataset", "licensee", "scheme", "strategy", "rate", "marked", "key id", "issued", "status", "path"]
    print_table(headers, [[cell(v) for v in r.values()] for r in rows],
                numeric=["id", "rate", "marked", "key id", "issued"], optional=["strategy", "scheme", "dataset"])
    _print_pending(reg, dataset)


def _print_pending(reg, dataset: Optional[str]) -> None:
    """Copies whose protect was interrupted before their folder was written: not issued, not traced."""
    for p in reg.pending_copies():
        if dataset is None or p["dataset"] == dataset:
            err_console.print(f"[yellow]interrupted:[/] copy {p['id']} of {p['dataset']} for {p['licensee']} "
                              f"({p['out_path']}) was never written; rerun the same `tracemark protect` command",
                              highlight=False, soft_wrap=True)


@app.command("revoke", examples=["tracemark revoke acme --reason \"licence ended\"",
                                  "tracemark revoke acme --dataset photos"])
def revoke_cmd(licensee: str = typer.Argument(..., metavar="LICENSEE", help="Whose copy to revoke."),
               dataset: Optional[str] = typer.Option(None, "--dataset", help="The copy's dataset (needed when the "
                                                     "licensee holds several)."),
               reason: str = typer.Option("", "--reason", help="Recorded with the revocation."),
               home: HomeOpt = None) -> None:
    """Mark a licensee's copy revoked (the licence ended, or a new copy replaces it).

    The row stays in the registry and the copy is still traced: a leak of a revoked copy is still
    that licensee's. The licensee may then be issued a new copy (with a new key)."""
    from tracemark.registry.database import Registry, find_copy

    reg = Registry(home)
    copy = find_copy(reg, licensee, dataset)
    reg.revoke(copy.dataset, licensee, reason)
    console.print(f"Revoked copy {copy.id} of [bold]{copy.dataset}[/] held by [bold]{licensee}[/]; it is kept and "
                  "still traced.")


@app.command(examples=["tracemark backup ~/registry-2026-05-01.bak",
                       "tracemark backup ~/registry-2026-05-01.bak --with-key"])
def backup(dest: Path = typer.Argument(..., metavar="BACKUP_FILE", help="Backup file to write (mode 0600); outside the tracemark home."),
           force: bool = typer.Option(False, "--force", help="Overwrite an existing backup file."),
           with_key: bool = typer.Option(False, "--with-key", help="Put the master key in the backup too: one file "
                                         "restores everything, and is then as secret as the key itself."),
           home: HomeOpt = None) -> None:
    """Write a consistent backup of the registry (SQLite online backup; safe while other commands run).

    The master key is left out unless --with-key: keep a copy of master.key apart (every licensee key
    derives from it)."""
    from tracemark.registry.database import Registry

    reg = Registry(home)
    path = reg.backup(dest, force=force, with_key=with_key)
    console.print(f"Registry backed up to {path}")
    if with_key:
        err_console.print(f"[bold yellow]warning:[/] {path} holds the master key (mode 0600): whoever reads it can "
                          "derive every licensee key. Store it as you store master.key.", highlight=False,
                          soft_wrap=True)
    else:
        console.print(f"  The master key is not in the backup: keep {reg.key_path} safe apart from it "
                      "(or back up with --with-key).")


@app.command(examples=["tracemark restore ~/registry-2026-05-01.bak"])
def restore(backup_file: Path = typer.Argument(..., metavar="BACKUP_FILE", help="A file written by `tracemark backup`."),
            home: HomeOpt = None) -> None:
    """Put a registry backup in place (the file it replaces is kept beside it)."""
    from tracemark.registry.database import default_home
    from tracemark.registry.restore import restore as _restore

    res = _restore(home or default_home(), backup_file)
    console.print(f"Registry restored from {backup_file} to {res.db}")
    if res.key_installed:
        console.print(f"  The master key carried by the backup was put in {res.db.parent / 'master.key'} (mode 0600)")
    if res.replaced is not None:
        console.print(f"  The registry it replaced is kept as {res.replaced}")
    if res.not_in_backup:
        err_console.print(f"[yellow]warning:[/] {len(res.not_in_backup)} cop{'y' if len(res.not_in_backup) == 1 else 'ies'}"
                          f" recorded in the replaced registry {'is' if len(res.not_in_backup) == 1 else 'are'} not in "
                          f"this backup ({', '.join(res.not_in_backup[:5])}{', ...' if len(res.not_in_backup) > 5 else ''}):"
                          f" they cannot be traced until {res.replaced} is restored instead", highlight=False,
                          soft_wrap=True)
