"""Hostile but realistic CLI run families against the ``tracemark`` CLI (issue 27).

Each family repeats what a careless user, a crash or a curious licensee does to the command line
(bad inputs, broken registries and keys, kill -9, restore racing protect, output paths aimed at
the registry or the key, bad audit options, looking for secrets in what the tool wrote) and
classifies every run:

- traceback: "Traceback (most recent call last)" in its output;
- silent-wrong: exit 0 or 3 (or a success message) where it should have been refused, a wrong verdict,
  or an output that clobbered something;
- lost: a record or a secret lost: master.key changed or gone, a copy reported as issued missing
  from the registry (and from every file a restore kept), committed rows lost, a secret found in
  what the tool wrote;
- failed: a run that should have worked exited other than 0 / 3 (named) or hung (listed, not part of the target).

Target once issue 27 is fixed: 0 tracebacks, 0 silent-wrong, 0 lost. Every run is a subprocess
(``python -m tracemark``) with its own ``TRACEMARK_HOME`` under a temporary folder.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/hostile.py [--quick] [--families 1,5] [--seed N]
      [--out results/hostile.json] [--keep] [-v]

--quick runs every family with fewer cases (about 3-4 minutes on 2 cores; the full set about 8).
The exit status is 1 when a run was a traceback, silent-wrong or lost, or a family's own code
crashed (counted as 'failed' in that family, traceback under 'crashed' in --out); else 0.
--keep keeps the temporary folder so that a listed command can be rerun by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

TB = "Traceback (most recent call last)"
CATEGORIES = ("traceback", "silent-wrong", "lost", "failed")
REPO = Path(__file__).resolve().parent.parent
STOCK_MODEL = REPO / "testworld" / "tracemark_sim" / "base_model"
#: A verdict that names a licensee exits 3 (tracemark.cli.errors.EXIT_NAMED): the command ran to the end.
EXIT_NAMED = 3


# --- run records and the classifier ------------------------------------------------------------
@dataclass
class Run:
    """One CLI run and what the checks after it found. ``expect``: ok | refuse | any."""

    family: str
    case: str
    cmd: list[str]
    home: str = ""
    expect: str = "any"
    rc: int | None = None
    out: str = ""
    err: str = ""
    timed_out: bool = False
    killed: bool = False  # killed on purpose (kill -9 family): its exit status means nothing
    seconds: float = 0.0
    findings: list[tuple[str, str]] = field(default_factory=list)  # (category, why) from post-checks

    def find(self, category: str, why: str) -> None:
        assert category in CATEGORIES, category
        self.findings.append((category, why))

    @property
    def ok(self) -> bool:
        """Ran to the end: exit 0, or EXIT_NAMED (a trace-files / audit verdict that names someone)."""
        return self.rc in (0, EXIT_NAMED) and not self.timed_out

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def shown(self) -> str:
        """The command as a user would type it."""
        if not self.cmd:
            return "(no command)"
        cli = self.cmd[1:3] == ["-m", "tracemark"]
        args = ["tracemark", *self.cmd[3:]] if cli else self.cmd
        prefix = f"TRACEMARK_HOME={shlex.quote(self.home)} " if self.home else ""
        return prefix + " ".join(map(shell_quote, args))


def shell_quote(arg: str) -> str:
    """shlex.quote, or bash's $'...' for arguments with control characters (a newline or ESC in a
    licensee name must not reach the terminal raw)."""
    if arg.isprintable():
        return shlex.quote(arg)
    return "$'" + "".join(c if c.isprintable() and c not in "\\'" else
                          ("\\" + c if c in "\\'" else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                          for c in arg) + "'"


def printable(line: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in line)


def classify(run: Run) -> dict[str, list[str]]:
    """Categories of a finished run, each with its reasons (empty dict: a clean run)."""
    found: dict[str, list[str]] = {}

    def add(cat: str, why: str) -> None:
        found.setdefault(cat, []).append(why)

    if TB in run.out or TB in run.err:
        add("traceback", "printed a Python traceback")
    if not run.killed:
        if run.timed_out:
            add("failed", "hung (killed after its time limit)")
        elif run.expect == "refuse" and run.ok:
            add("silent-wrong", f"exit {run.rc} where it should have been refused")
        elif run.expect == "ok" and not run.ok and TB not in run.text:
            add("failed", f"exit {run.rc} where it should have worked")
    for cat, why in run.findings:
        add(cat, why)
    return found


def first_last(text: str) -> tuple[str, str]:
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if not lines:
        return "", ""
    return printable(lines[0])[:240], printable(lines[-1])[:240]


# --- small file helpers ------------------------------------------------------------------------
def file_hash(path: Path) -> str | None:
    """SHA-256 of a file, 'missing', or a tag for what else sits there (never opens a fifo)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "symlink->" + os.readlink(path)
    if stat.S_ISFIFO(st.st_mode):
        return "fifo"
    if not stat.S_ISREG(st.st_mode):
        return f"special:{stat.S_IFMT(st.st_mode):o}"
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hash(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every regular file below ``root`` (symlinks as their target text)."""
    out = {}
    root = Path(root)
    if not root.is_dir():
        return {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = file_hash(p) or ""
    return out


def registry_rows(db: Path) -> dict | None:
    """The registry's owner, datasets, licensees and copies rows (audits excluded: tracing adds
    those legitimately), or None when the file is missing or unreadable."""
    if not Path(db).is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = {}
            for table in ("owner", "datasets", "licensees", "copies"):
                rows[table] = [tuple(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY 1")]
            return rows
        finally:
            con.close()
    except sqlite3.Error:
        return None


def issued_in(db: Path) -> set[tuple[str, str]] | None:
    """(dataset, licensee) of the copies a registry file records as issued, or None if unreadable."""
    if not Path(db).is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            cols = {r[1] for r in con.execute("PRAGMA table_info(copies)")}
            where = " WHERE c.status = 'issued'" if "status" in cols else ""
            return {(d, lic) for d, lic in con.execute(
                "SELECT d.name, l.name FROM copies c JOIN datasets d ON d.id = c.dataset_id "
                "JOIN licensees l ON l.id = c.licensee_id" + where)}
        finally:
            con.close()
    except sqlite3.Error:
        return None


def kept_files(home: Path) -> list[Path]:
    """The registry files a restore kept beside the live one (not their SQLite side files)."""
    return [p for p in sorted(home.glob("registry.sqlite.replaced-*"))
            if not p.name.endswith(("-wal", "-shm", "-journal"))]


def findable(home: Path, dataset: str, licensee: str) -> str | None:
    """Where an issued copy is still recorded: the live registry or a file a restore kept."""
    if (dataset, licensee) in (issued_in(home / "registry.sqlite") or set()):
        return "live"
    for kept in kept_files(home):
        if (dataset, licensee) in (issued_in(kept) or set()):
            return kept.name
    return None


# --- image writers for hostile datasets ------------------------------------------------------
def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 8 <= len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        typ = data[pos + 4:pos + 8]
        out.append((typ, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
        if typ == b"IEND":
            break
    return out


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for typ, body in chunks:
        out.append(len(body).to_bytes(4, "big") + typ + body + zlib.crc32(typ + body).to_bytes(4, "big"))
    return b"".join(out)


def png16_rgb(arr8: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one) holding ``arr8`` scaled to 16 bits,
    with low bits that 8-bit decoding loses."""
    h, w, _ = arr8.shape
    a16 = arr8.astype(">u2") * 257 + np.arange(w, dtype=">u2")[None, :, None] % 7
    raw = b"".join(b"\x00" + a16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    return png_bytes([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw, 6)), (b"IEND", b"")])


def libpng_like(data: bytes, chunk: int = 8192, extra: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """Rewrite a PNG the way libpng-based tools lay it out: IDAT split in ``chunk``-byte pieces,
    ancillary chunks (pHYs, tEXt) before the image data."""
    chunks = png_chunks(data)
    idat = b"".join(b for t, b in chunks if t == b"IDAT")
    head = [(t, b) for t, b in chunks if t not in (b"IDAT", b"IEND")] + list(extra or [])
    pieces = [(b"IDAT", idat[i:i + chunk]) for i in range(0, len(idat), chunk)]
    return png_bytes(head + pieces + [(b"IEND", b"")])


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, body) of a JPEG's header segments up to the first scan."""
    segs: list[tuple[int, bytes]] = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        n = int.from_bytes(data[pos + 2:pos + 4], "big")
        segs.append((marker, data[pos + 4:pos + 2 + n]))
        pos += 2 + n
        if marker == 0xDA:
            break
    return segs


def _short(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:10]


_STANDARD_DHT: str | None = None


def standard_dht() -> str:
    """The hash of the Huffman tables libjpeg writes without optimisation (Annex K)."""
    global _STANDARD_DHT
    if _STANDARD_DHT is None:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            buf, "JPEG", quality=90)
        _STANDARD_DHT = _short(b"".join(b for m, b in jpeg_segments(buf.getvalue()) if m == 0xC4))
    return _STANDARD_DHT


def file_features(path: Path) -> dict[str, str]:
    """Container features a licensee can read without any key: PNG zlib header, chunk layout and
    ancillary chunks; JPEG segment list, tables, APP segments, frame type and sampling."""
    data = Path(path).read_bytes()
    if data.startswith(b"\x89PNG"):
        chunks = png_chunks(data)
        idat = [b for t, b in chunks if t == b"IDAT"]
        seq = []
        for t, _ in chunks:
            if not seq or seq[-1] != t.decode("latin-1"):
                seq.append(t.decode("latin-1"))
        return {"png.zlib_header": idat[0][:2].hex() if idat else "none",
                "png.chunk_order": "-".join(seq),
                "png.idat_split": "single" if len(idat) == 1 else f"split@{len(idat[0])}",
                "png.ancillary": ",".join(sorted({t.decode('latin-1') for t, _ in chunks
                                                  if t not in (b'IHDR', b'IDAT', b'IEND')})) or "none"}
    if data.startswith(b"\xff\xd8"):
        segs = jpeg_segments(data)
        sof = next(((m, b) for m, b in segs if m in (0xC0, 0xC1, 0xC2)), (0, b""))
        comps = sof[1][6:6 + 3 * sof[1][5]] if len(sof[1]) > 6 else b""
        sampling = ",".join(f"{comps[i]}:{comps[i + 1]:02x}" for i in range(0, len(comps) - 2, 3))
        dht = _short(b"".join(b for m, b in segs if m == 0xC4))
        return {"jpeg.segments": "-".join(f"{m:02X}" for m in [0xD8] + [m for m, _ in segs]),
                "jpeg.dqt": _short(b"".join(b for m, b in segs if m == 0xDB)),
                "jpeg.huffman": "standard" if dht == standard_dht() else "custom",
                "jpeg.app": ",".join(f"{m:02X}:{b[:5]!r}:{len(b)}" for m, b in segs if 0xE0 <= m <= 0xEF),
                "jpeg.frame": f"{sof[0]:02X}/{sampling}"}
    return {"other": "unknown"}


def secret_hits(blob: bytes, secrets: dict[str, bytes]) -> list[str]:
    """Names of the secrets whose bytes occur in ``blob``."""
    return [what for what, secret in secrets.items() if secret and secret in blob]


class _Unpickle:
    """A pickled object whose loading creates a folder: proof that a weights file was unpickled
    with arbitrary code allowed (only ``os.mkdir`` of a marker, harmless)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --- the runner --------------------------------------------------------------------------------
class Ctx:
    """The temporary world of one script run: folders, fixtures, and every run so far."""

    def __init__(self, root: Path, seed: int, quick: bool) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.quick = quick
        self.runs: list[Run] = []
        self.family = ""
        self._n = 0
        self._fixtures: dict[str, Path] = {}
        self.skipped: list[str] = []
        self.verbose = False

    # folders
    def tmp(self, name: str) -> Path:
        self._n += 1
        slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-")[:40]
        p = self.root / f"{self._n:03d}-{slug}"
        p.mkdir(parents=True)
        return p

    def env(self, home: Path | None) -> dict:
        env = dict(os.environ)
        env.pop("TRACEMARK_PROGRESS", None)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.update({"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        if home is not None:
            env["TRACEMARK_HOME"] = str(home)
        else:
            env.pop("TRACEMARK_HOME", None)
        return env

    # runs
    def command(self, args: list) -> list[str]:
        return [sys.executable, "-m", "tracemark", *[str(a) for a in args]]

    def run(self, case: str, args: list, *, home: Path | None, expect: str = "any", timeout: float = 120,
            record: bool = True) -> Run:
        """Run the CLI to the end (killed after ``timeout`` s: a hang)."""
        proc = self.start(args, home=home)
        return self.finish(case, proc, args, home=home, expect=expect, timeout=timeout, record=record)

    def start(self, args: list, *, home: Path | None) -> subprocess.Popen:
        return subprocess.Popen(self.command(args), env=self.env(home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=self.root,
                                start_new_session=True, text=True, errors="replace")

    def finish(self, case: str, proc: subprocess.Popen, args: list, *, home: Path | None, expect: str = "any",
               timeout: float = 120, killed: bool = False, record: bool = True, t0: float | None = None) -> Run:
        t0 = time.monotonic() if t0 is None else t0
        run = Run(self.family, case, self.command(args), str(home) if home else "", expect, killed=killed)
        try:
            run.out, run.err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            kill_group(proc.pid)
            run.out, run.err = proc.communicate()
        run.rc = proc.returncode
        run.seconds = time.monotonic() - t0
        if record:
            self.runs.append(run)
        if self.verbose:
            print(f"\n  [{run.rc}{' T/O' if run.timed_out else ''}{' killed' if killed else ''} {run.seconds:.1f}s] "
                  f"{case}: {first_last(run.text)[1][:150]}", end="", flush=True)
        return run

    def pseudo(self, case: str) -> Run:
        """A record for findings that belong to no single CLI run (a scan, a family-wide check)."""
        run = Run(self.family, case, [], "", "any", rc=0)
        self.runs.append(run)
        return run

    def note(self, case: str, category: str, why: str) -> Run:
        run = self.pseudo(case)
        run.find(category, why)
        return run

    # fixtures
    def fixture(self, name: str, make: Callable[[Path], None]) -> Path:
        if name not in self._fixtures:
            p = self.root / "fixtures" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            make(p)
            self._fixtures[name] = p
        return self._fixtures[name]

    def data(self) -> Path:
        """The shared small dataset (PNG + JPEG, metadata.jsonl). Read-only: never mutate it."""
        from tracemark.evaluation.samples import make_sample_dataset

        return self.fixture("data", lambda p: make_sample_dataset(p, n=40 if self.quick else 60, size=48,
                                                                  seed=1, fmt="mixed"))

    def data_copy(self, name: str) -> Path:
        """A private copy of the shared dataset (folder name ``data``) that a case may damage."""
        dst = self.tmp(name) / "data"
        shutil.copytree(self.data(), dst)
        return dst

    def template_home(self, with_copy: bool) -> Path:
        """An initialised home (built once with the CLI), optionally holding a copy of the shared
        dataset issued to 'acme' (folder fixtures/acme-copy)."""
        def make_init(p: Path) -> None:
            self.run("setup: init", ["init"], home=p, expect="ok", record=False)
            if not (p / "master.key").exists():
                raise RuntimeError(f"tracemark init did not create {p}/master.key")

        def make_copy(p: Path) -> None:
            make_init(p)
            r = self.run("setup: protect acme", ["protect", self.data(), "-l", "acme", "-o",
                                                 p.parent / "acme-copy", "--rate", "0.25"], home=p, record=False)
            if not r.ok:
                raise RuntimeError(f"setup protect failed: {first_last(r.text)[1]}")

        return self.fixture("home-copy" if with_copy else "home-init", make_copy if with_copy else make_init)

    def home(self, name: str, with_copy: bool = False) -> Path:
        """A private clone of a template home (same master key, same registry)."""
        dst = self.tmp(name) / "home"
        shutil.copytree(self.template_home(with_copy), dst, symlinks=True)
        return dst

    @property
    def acme_copy(self) -> Path:
        return self.template_home(True).parent / "acme-copy"


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session ``sid`` (pool workers outliving a killed parent)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(d.name))
    return pids


def check_unchanged(run: Run, what: str, before: str | dict | None, after: str | dict | None,
                    category: str) -> None:
    """A post-check: ``what`` must be the same after the run as before it."""
    if before != after:
        gone = after in (None, "missing")
        run.find(category, f"{what} {'gone' if gone else 'changed'} by the run")


# --- family 1: bad inputs ------------------------------------------------------------------------
def family_bad_inputs(ctx: Ctx) -> None:
    def meta_rows(data: Path) -> list[dict]:
        return [json.loads(ln) for ln in (data / "metadata.jsonl").read_text().splitlines() if ln.strip()]

    def write_rows(data: Path, rows: list[dict], ensure_ascii: bool = True) -> None:
        (data / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows))

    def protect(case: str, data: Path, expect: str, *extra) -> tuple[Run, Path]:
        home = ctx.home(case)
        out = home.parent / "copy"
        before = tree_hash(data)
        run = ctx.run(case, ["protect", data, "-l", "acme", "-o", out, *extra], home=home, expect=expect)
        check_unchanged(run, f"the input dataset {data}", before, tree_hash(data), "lost")
        if run.rc != 0 and out.exists():
            run.find("silent-wrong", f"refused but left an output folder {out}")
        return run, out

    pngs = sorted(p.name for p in ctx.data().glob("*.png"))
    jpgs = sorted(p.name for p in ctx.data().glob("*.jpg"))

    # damaged images: refused; with --on-error skip the file is named in the output
    d = ctx.data_copy("corrupt")
    (d / pngs[1]).write_bytes(os.urandom(900))
    protect("corrupt PNG", d, "refuse")
    r, out = protect("corrupt PNG, --on-error skip", d, "ok", "--on-error", "skip")
    if r.ok and pngs[1] not in r.text:
        r.find("silent-wrong", f"skipped {pngs[1]} without naming it")
    if r.ok and (out / pngs[1]).exists():
        r.find("silent-wrong", f"the corrupt {pngs[1]} was copied into the licensee's copy")
    d = ctx.data_copy("truncated-png")
    raw = (d / pngs[2]).read_bytes()
    (d / pngs[2]).write_bytes(raw[: len(raw) // 2])
    protect("truncated PNG", d, "refuse")
    if not ctx.quick:
        d = ctx.data_copy("truncated-jpeg")
        raw = (d / jpgs[2]).read_bytes()
        (d / jpgs[2]).write_bytes(raw[: int(len(raw) * 0.6)])
        protect("truncated JPEG", d, "refuse")

    # 16-bit RGB PNGs, all marked (rate 1): refused, or written back with their 16 bits
    d = ctx.data_copy("png16")
    deep = pngs[:3]
    for name in deep:
        (d / name).write_bytes(png16_rgb(np.asarray(Image.open(d / name).convert("RGB"))))
    r, out = protect("16-bit RGB PNG at rate 1", d, "any", "--rate", "1")
    if r.ok:
        for name in deep:
            head = (out / name).read_bytes()[:32] if (out / name).exists() else b""
            if len(head) < 26 or head[24] != 16:
                r.find("silent-wrong", f"{name}: a 16-bit PNG written back with {head[24] if len(head) > 24 else '?'} "
                                       "bits per channel (depth silently lost)")
                break

    # odd captions and columns
    d = ctx.data_copy("surrogate")
    rows = meta_rows(d)
    rows[0]["text"] = "a lone surrogate \ud800 in a caption"
    write_rows(d, rows)
    r, out = protect("lone surrogate in a caption", d, "any")
    if r.ok:
        try:
            got = meta_rows(out)
            if not any(row.get("file_name") == rows[0]["file_name"] and "\ud800" in str(row.get("text"))
                       for row in got):
                r.find("silent-wrong", "the caption with a lone surrogate was changed in the copy")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            r.find("silent-wrong", f"exit 0 but the copy's metadata.jsonl is unreadable ({exc.__class__.__name__})")

    d = ctx.data_copy("blank-caption")
    rows = meta_rows(d)
    for row in rows[:4]:
        row["text"] = "   \t "
    write_rows(d, rows)
    r, out = protect("whitespace-only captions", d, "any", "--rate", "0.2")
    if r.ok:
        missing = {row["file_name"] for row in rows} - {row.get("file_name") for row in meta_rows(out)}
        if missing:
            r.find("silent-wrong", f"{len(missing)} sample(s) silently left out of the copy ({sorted(missing)[0]})")

    # unusual but valid captions: the copy must trace to its licensee, the original to nobody
    d = ctx.data_copy("odd-captions")
    rows = meta_rows(d)
    rows[0]["text"] = "une photo d'un chat \u05e9\u05dc\u05d5\u05dd \U0001f431 \u200d caf\u00e9"
    rows[1]["text"] = "very long " * 800
    rows[2]["text"] = "tabs\tand\nnewlines\r\ninside"
    write_rows(d, rows, ensure_ascii=False)
    r, out = protect("unusual valid captions", d, "ok", "--rate", "0.25")
    if r.ok:
        verdict_checks(ctx, "unusual valid captions", Path(r.home), out, d, "acme")

    d = ctx.data_copy("no-text")
    rows = meta_rows(d)
    del rows[3]["text"]
    write_rows(d, rows)
    protect("row without its caption column", d, "refuse")
    if not ctx.quick:
        d = ctx.data_copy("no-file-name")
        rows = meta_rows(d)
        del rows[3]["file_name"]
        write_rows(d, rows)
        protect("row without file_name", d, "refuse")

    d = ctx.data_copy("junk-listed")
    (d / "notes.txt").write_text("not an image\n")
    rows = meta_rows(d)
    rows[5]["file_name"] = "notes.txt"
    write_rows(d, rows)
    protect("junk file listed as a sample", d, "refuse")

    d = ctx.data_copy("unlisted")
    shutil.copyfile(d / pngs[0], d / "extra_unlisted.png")
    (d / ".DS_Store").write_bytes(os.urandom(64))
    r, out = protect("image missing from metadata (+ junk file)", d, "any")
    if r.ok and not (out / "extra_unlisted.png").exists() and "extra_unlisted.png" not in r.text:
        r.find("silent-wrong", "extra_unlisted.png (not in metadata) silently left out of the copy")

    d = ctx.data_copy("symlink-loop")
    os.symlink("loop.png", d / "loop.png")
    os.symlink(".", d / "again")  # a folder loop: must not recurse forever
    rows = meta_rows(d)
    rows.append({"file_name": "loop.png", "text": "a symlink to itself"})
    write_rows(d, rows)
    protect("symlink loop named in metadata", d, "refuse")
    d = ctx.data_copy("dir-loop")
    os.symlink(".", d / "again")
    os.symlink("sub2", d / "sub1")
    os.symlink("sub1", d / "sub2")
    protect("folder symlink loops (unlisted)", d, "any")

    # licensee names a terminal or a log line would mangle
    for case, name in [("licensee with a newline", "acme\nevil corp"), ("licensee with ESC", "acme\x1b[2J\x1b[31m"),
                       ("licensee with a carriage return", "acme\rinnocent")][: 2 if ctx.quick else 3]:
        home = ctx.home(case)
        ctx.run(case, ["protect", ctx.data(), "-l", name, "-o", home.parent / "copy"], home=home, expect="refuse")


def verdict_checks(ctx: Ctx, case: str, home: Path | None, copy: Path, data: Path, licensee: str) -> None:
    """Trace an issued copy (must name ``licensee``) and the original data (must name nobody)."""
    if home is None:
        return
    for what, folder, want in (("the copy", copy, [licensee]), ("the original", data, [])):
        out = home.parent / f"verdict-{len(list(home.parent.glob('verdict-*')))}.json"
        r = ctx.run(f"{case}: trace {what}", ["trace-files", folder, "--data", data, "--json", out], home=home,
                    expect="ok")
        if r.ok:
            try:
                named = json.loads(out.read_text()).get("named")
            except (OSError, json.JSONDecodeError):
                r.find("silent-wrong", "exit 0 but no readable --json verdict")
                continue
            if sorted(named or []) != want:
                r.find("silent-wrong", f"wrong verdict on {what}: named {named}, expected {want or 'nobody'}")


# --- family 2: registry and key faults -----------------------------------------------------------
def family_registry_and_key(ctx: Ctx) -> None:
    data = ctx.data()

    def commands(case: str, home: Path, cmds: list[tuple[str, list, str]], *, key_before: str | None = None,
                 rows_before=None, db_bytes: bool = False) -> list[Run]:
        """Run ``cmds`` on ``home``; the key file must stay as it was (lost), the registry's rows
        too (lost when rows vanish, silent-wrong when a refused run wrote some)."""
        runs = []
        for label, args, expect in cmds:
            key0 = file_hash(home / "master.key") if key_before is None else key_before
            db0 = file_hash(home / "registry.sqlite") if db_bytes else registry_rows(home / "registry.sqlite")
            r = ctx.run(f"{case}: {label}", args, home=home, expect=expect)
            if key0 != "missing":  # a key created where there was none is judged by the case
                check_unchanged(r, "master.key", key0, file_hash(home / "master.key"), "lost")
            db1 = file_hash(home / "registry.sqlite") if db_bytes else registry_rows(home / "registry.sqlite")
            if r.rc != 0 and db0 != db1:
                r.find("lost" if db1 in (None, "missing") else "silent-wrong",
                       "a refused run changed the registry file" if db_bytes else "a refused run changed registry rows")
            runs.append(r)
        return runs

    def protect(lic: str, home: Path) -> list:
        return ["protect", data, "-l", lic, "-o", home.parent / f"copy-{lic}"]

    # a zero-byte registry
    home = ctx.home("zero-byte registry", with_copy=True)
    (home / "registry.sqlite").write_bytes(b"")
    runs = commands("zero-byte registry", home, [("copies", ["copies", "--json"], "refuse"),
                                                 ("protect", protect("bob", home), "refuse")], db_bytes=True)
    if any(r.ok for r in runs) or (home / "registry.sqlite").stat().st_size:
        runs[-1].find("silent-wrong", "a zero-byte registry was silently replaced by a fresh one")

    # a valid SQLite file with no tables, and one holding someone else's tables
    for case, sql in [("empty SQLite database", "CREATE TABLE t (x); DROP TABLE t;"),
                      ("SQLite with unrelated tables", "CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT); "
                                                       "INSERT INTO photos (path) VALUES ('/srv/a.jpg');")]:
        home = ctx.home(case, with_copy=True)
        db = home / "registry.sqlite"
        db.unlink()
        for side in ("-wal", "-shm"):
            Path(str(db) + side).unlink(missing_ok=True)
        con = sqlite3.connect(db)
        con.executescript(sql)
        con.close()
        os.chmod(db, 0o600)
        schema0 = sorted(sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT name FROM sqlite_master").fetchall())
        runs = commands(case, home, [("copies", ["copies", "--json"], "refuse"),
                                     ("protect", protect("bob", home), "refuse")][: 1 if ctx.quick else 2],
                        db_bytes=False)
        schema1 = sorted(sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT name FROM sqlite_master").fetchall())
        if schema1 != schema0:
            runs[-1].find("silent-wrong", f"tracemark tables written into a database that was not a registry "
                                          f"({len(schema0)} -> {len(schema1)} schema objects)")

    # a registry missing its copies table
    home = ctx.home("registry without copies table", with_copy=True)
    con = sqlite3.connect(home / "registry.sqlite")
    con.execute("DROP TABLE copies")
    con.commit()
    con.close()
    commands("no copies table", home, [("copies", ["copies", "--json"], "refuse"),
                                       ("licensees", ["licensees", "--json"], "any"),
                                       ("protect", protect("bob", home), "refuse"),
                                       ("trace-files", ["trace-files", ctx.acme_copy], "refuse")
                                       ][: 3 if ctx.quick else 4])

    # a wrong (well-formed) master key
    home = ctx.home("wrong master key", with_copy=True)
    (home / "master.key").write_text(os.urandom(32).hex() + "\n")
    os.chmod(home / "master.key", 0o600)
    wrong = file_hash(home / "master.key")
    rows0 = registry_rows(home / "registry.sqlite")
    runs = commands("wrong master key", home, [
        ("protect", protect("bob", home), "refuse"),
        ("materialize", ["materialize", "acme", "-o", home.parent / "mat"], "refuse"),
        ("trace-files", ["trace-files", ctx.acme_copy], "refuse")][: 2 if ctx.quick else 3], key_before=wrong)
    if registry_rows(home / "registry.sqlite") != rows0:
        runs[0].find("silent-wrong", "registry rows written under a wrong master key")

    # key present, registry gone; registry present, key gone
    home = ctx.home("key without registry", with_copy=True)
    for side in ("", "-wal", "-shm"):
        Path(str(home / "registry.sqlite") + side).unlink(missing_ok=True)
    commands("key without registry", home, [("copies", ["copies", "--json"], "refuse"),
                                            ("init", ["init"], "refuse"),
                                            ("protect", protect("bob", home), "refuse")][: 2 if ctx.quick else 3])
    home = ctx.home("registry without key", with_copy=True)
    (home / "master.key").unlink()
    runs = commands("registry without key", home, [("protect", protect("bob", home), "refuse"),
                                                   ("init", ["init"], "refuse")])
    if (home / "master.key").exists():
        runs[-1].find("silent-wrong", "a new master key was created beside a registry made with another one")

    # a readable-by-all master key; garbage in it; a registry from a newer tracemark
    home = ctx.home("master key 0644", with_copy=True)
    os.chmod(home / "master.key", 0o644)
    commands("master key 0644", home, [("protect", protect("bob", home), "refuse")])
    if not ctx.quick:
        home = ctx.home("garbage master key", with_copy=True)
        (home / "master.key").write_text("not a key at all\n")
        os.chmod(home / "master.key", 0o600)
        commands("garbage master key", home, [("protect", protect("bob", home), "refuse"),
                                              ("copies", ["copies", "--json"], "any")])
        home = ctx.home("registry schema from the future", with_copy=True)
        con = sqlite3.connect(home / "registry.sqlite")
        con.execute("PRAGMA user_version = 99")
        con.close()
        commands("newer schema", home, [("copies", ["copies", "--json"], "refuse")], db_bytes=True)

    # read-only home (skipped where chmod does not bind, e.g. as root)
    home = ctx.home("read-only home", with_copy=True)
    os.chmod(home, 0o500)
    try:
        if os.access(home, os.W_OK):
            ctx.skipped.append("read-only home: chmod 0500 does not stop this user (root?)")
        else:
            commands("read-only home", home, [("protect", protect("bob", home), "refuse"),
                                              ("copies", ["copies", "--json"], "any")])
    finally:
        os.chmod(home, 0o700)

    # a registry readable by everyone (created 0600 by init)
    home = ctx.home("registry mode 0644", with_copy=True)
    os.chmod(home / "registry.sqlite", 0o644)
    (r,) = commands("registry 0644", home, [("protect", protect("bob", home), "any")])
    mode = stat.S_IMODE(os.stat(home / "registry.sqlite").st_mode)
    if r.ok and mode & 0o077 and "registry" not in r.err.lower():
        r.find("silent-wrong", f"registry left world-readable (mode {mode:o}) without a word")


# --- family 3: kill -9 during protect, then the same command again -----------------------------
def family_kill9(ctx: Ctx) -> None:
    from tracemark.evaluation.samples import make_sample_dataset

    data = ctx.fixture("data-kill9", lambda p: make_sample_dataset(p, n=80 if ctx.quick else 120, size=64, seed=3,
                                                                   fmt="mixed"))
    home = ctx.home("kill9")
    outs = home.parent / "outs"

    def args(lic: str) -> list:
        return ["protect", data, "-l", lic, "-o", outs / lic, "--rate", "0.5"]

    t0 = time.monotonic()
    ctx.run("calibration run (no kill)", args("calib"), home=home, expect="ok")
    span = max(0.5, time.monotonic() - t0)
    for i in range(3 if ctx.quick else 8):
        lic = f"k{i}"
        out = outs / lic
        kill_during(ctx, "protect", args(lic), home, ctx.rng.uniform(0.05, 1.05 * span))
        issued_before = (data.name, lic) in (issued_in(home / "registry.sqlite") or set())
        again = ctx.run(f"rerun of protect {lic} after the kill", args(lic), home=home, expect="any")
        if not again.ok and not issued_before:
            again.find("failed", "the rerun after a kill -9 did not issue the copy")
        if again.ok and issued_before:
            again.find("silent-wrong", "issued a second copy for a licensee who already held one")
        listing = ctx.run(f"copies --json after kill {i}", ["copies", "--json"], home=home, expect="ok")
        try:  # one JSON document (a list); not JSON when the run failed
            rows = json.loads(listing.out) if listing.ok else []
        except json.JSONDecodeError:
            rows = []
            listing.find("silent-wrong", "copies --json printed no JSON list")
        mine = [r for r in rows if r.get("licensee") == lic]
        if (again.ok or issued_before) and not mine:
            listing.find("lost", f"the copy of {lic} is not listed as issued")
        elif mine and Path(mine[0].get("path") or "").resolve() != out.resolve():
            listing.find("silent-wrong", f"registry path {mine[0].get('path')} is not {out}")
        if mine and not (out / "metadata.jsonl").is_file():
            listing.find("lost", f"registry lists the copy of {lic} but {out} holds no copy")
        leftovers = [p.name for p in outs.glob(f".{lic}*")]
        if leftovers:
            again.find("silent-wrong", f"temporary folder left beside --out: {leftovers[0]}")
        if mine and out.is_dir():
            mat = home.parent / f"mat-{lic}"
            m = ctx.run(f"materialize after kill {i}", ["materialize", lic, "-o", mat], home=home, expect="ok")
            if m.ok and tree_hash(mat) != tree_hash(out):
                a, b = tree_hash(mat), tree_hash(out)
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                m.find("lost", f"materialized copy differs from the issued one ({len(diff)} file(s), e.g. {diff[0]})")
            if i < (1 if ctx.quick else 3):
                verdict_checks(ctx, f"kill {i}", home, out, data, lic)

    # kill -9 during materialize, backup and restore: the rerun works, nothing half-written stays,
    # no issued copy is lost
    old = home.parent / "before-kills.sqlite"
    ctx.run("backup for the restore kills", ["backup", old], home=home, expect="ok")
    before = issued_in(home / "registry.sqlite") or set()
    for i in range(1 if ctx.quick else 3):
        mat = home.parent / f"remat-{i}"
        margs = ["materialize", "calib", "-o", mat]
        kill_during(ctx, "materialize", margs, home, ctx.rng.uniform(0.05, 1.05 * span))
        r = ctx.run(f"rerun of materialize {i} after the kill", margs, home=home, expect="any")
        if not r.ok and not (mat / "metadata.jsonl").is_file():
            r.find("failed", "materialize after a kill -9 did not write the copy")
        if mat.is_dir() and tree_hash(mat) != tree_hash(outs / "calib"):
            r.find("silent-wrong" if r.ok else "lost", f"{mat} is not the issued copy (half-written after a kill?)")
        if [p for p in mat.parent.glob(f".{mat.name}*")]:
            r.find("silent-wrong", f"temporary folder left beside {mat}")

        bk = home.parent / f"bk-{i}.sqlite"
        kill_during(ctx, "backup", ["backup", bk], home, ctx.rng.uniform(0.2, 1.6))
        if bk.exists() and issued_in(bk) != issued_in(home / "registry.sqlite"):
            ctx.note(f"backup {i} killed", "silent-wrong", f"a killed backup left a half or unreadable {bk.name}")
        bk.unlink(missing_ok=True)  # judged above; the rerun writes it afresh
        r = ctx.run(f"rerun of backup {i} after the kill", ["backup", bk], home=home, expect="ok")
        if r.ok and issued_in(bk) != issued_in(home / "registry.sqlite"):
            r.find("lost", "the backup does not hold the registry's issued copies")
        if [p for p in bk.parent.glob(f".{bk.name}*")]:
            r.find("silent-wrong", f"temporary file left beside {bk.name}")

        kill_during(ctx, "restore", ["restore", old], home, ctx.rng.uniform(0.2, 1.6))
        chk = ctx.run(f"copies after killed restore {i}", ["copies", "--json"], home=home, expect="ok")
        gone = sorted(lic for ds, lic in before if findable(home, ds, lic) is None)
        if gone:
            chk.find("lost", f"after a kill -9 of restore, {len(gone)} issued cop(ies) are in no registry file "
                             f"({gone[0]})")
        ctx.run(f"rerun of restore {i} after the kill", ["restore", old], home=home, expect="ok")


def kill_during(ctx: Ctx, what: str, args: list, home: Path, delay: float) -> Run:
    """Start ``args``, kill -9 its main process after ``delay`` s (if still running); pool workers
    must not outlive it."""
    proc = ctx.start(args, home=home)
    t = time.monotonic()
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    run = ctx.finish(f"kill -9 {what} after {delay:.2f}s", proc, args, home=home, killed=killed, t0=t)
    if killed:
        time.sleep(0.5)
        if orphans := session_members(proc.pid):
            run.find("failed", f"{len(orphans)} worker process(es) outlived the kill -9 of {what}")
            kill_group(proc.pid)
    return run


# --- family 4: restore racing protect; concurrent restores; a stale WAL reader -----------------
def family_restore_race(ctx: Ctx) -> None:
    data = ctx.data()
    home = ctx.home("race", with_copy=True)
    backup = home.parent / "backup.sqlite"
    ctx.run("backup", ["backup", backup], home=home, expect="ok")
    issued: list[tuple[str, Run]] = []
    t0 = time.monotonic()
    ctx.run("calibration protect", ["protect", data, "-l", "cal", "-o", home.parent / "cal"], home=home, expect="ok")
    span = max(0.5, time.monotonic() - t0)
    for i in range(3 if ctx.quick else 6):
        lic = f"p{i}"
        args = ["protect", data, "-l", lic, "-o", home.parent / lic]
        proc = ctx.start(args, home=home)
        t = time.monotonic()
        delay = ctx.rng.uniform(0.0, 1.1 * span)
        time.sleep(delay)
        rest = ctx.run(f"restore {delay:.2f}s into protect {lic}", ["restore", backup], home=home, expect="any",
                       timeout=90)
        prot = ctx.finish(f"protect {lic} racing a restore", proc, args, home=home, expect="any", timeout=90, t0=t)
        if "Issued copy" in prot.out:
            issued.append((lic, prot))
            if not (home.parent / lic / "metadata.jsonl").is_file():
                prot.find("lost", f"reported the copy of {lic} issued but its folder is missing")
            if findable(home, "data", lic) is None:
                (prot if rest.rc else rest).find(
                    "lost", f"{lic}'s copy was reported issued but is in neither the live registry nor a kept file")
        elif ("data", lic) in (issued_in(home / "registry.sqlite") or set()) and prot.rc != 0:
            prot.find("silent-wrong", f"failed, yet the registry lists {lic}'s copy as issued")
        chk = ctx.run(f"copies after race {i}", ["copies", "--json"], home=home, expect="ok")
        if not chk.ok:
            chk.find("lost", "the live registry is unusable after a restore")
    for lic, prot in issued:  # a later restore must not drop what an earlier one kept
        if findable(home, "data", lic) is None:
            ctx.note(f"after all races: {lic}", "lost", f"{lic}'s issued copy vanished from every registry file")

    # two restores at once, with a copy in the live registry that neither backup holds
    for k in range(1 if ctx.quick else 2):
        home = ctx.home(f"two restores {k}", with_copy=True)
        b1, b2 = home.parent / "b1.sqlite", home.parent / "b2.sqlite"
        ctx.run("backup 1", ["backup", b1], home=home, expect="ok")
        ctx.run("backup 2", ["backup", b2], home=home, expect="ok")
        ctx.run("protect live-only", ["protect", data, "-l", "liveonly", "-o", home.parent / "lo"], home=home,
                expect="ok")
        t = time.monotonic()
        procs = [(b, ctx.start(["restore", b], home=home)) for b in (b1, b2)]
        runs = [ctx.finish(f"concurrent restore {b.name}", p, ["restore", b], home=home, expect="any", timeout=90,
                           t0=t) for b, p in procs]
        if all(r.ok for r in runs) and findable(home, "data", "liveonly") is None:
            runs[1].find("lost", "two restores at once: the live registry they replaced was kept by neither "
                                 f"({len(kept_files(home))} kept file(s))")
        chk = ctx.run("copies after two restores", ["copies", "--json"], home=home, expect="ok")
        if not chk.ok:
            chk.find("lost", "the live registry is unusable after two concurrent restores")

    # a reader holding the WAL, protect, kill -9 the reader, restore an older backup
    home = ctx.home("stale WAL reader", with_copy=True)
    old = home.parent / "old.sqlite"
    ctx.run("backup (old)", ["backup", old], home=home, expect="ok")
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "c.execute('BEGIN'); c.execute('SELECT count(*) FROM copies').fetchall()\n"
         "print('ready', flush=True); time.sleep(600)", str(home / "registry.sqlite")],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready = reader.stdout.readline().strip() == "ready"
        prot = ctx.run("protect while a reader holds the WAL", ["protect", data, "-l", "walnew", "-o",
                                                                home.parent / "walnew"], home=home, expect="ok",
                       timeout=90)
    finally:
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait()
    if not ready:
        ctx.note("stale WAL reader", "failed", "the reader process did not start")
    rest = ctx.run("restore old backup after the reader died", ["restore", old], home=home, expect="any", timeout=90)
    if "Issued copy" in prot.out and findable(home, "data", "walnew") is None:
        rest.find("lost", "the copy issued while a reader held the WAL is in neither the live registry nor the "
                          "kept file (its WAL was discarded)")
    ctx.run("copies after WAL restore", ["copies", "--json"], home=home, expect="ok")


# --- family 5: output paths aimed at what must not be overwritten ------------------------------
def family_output_paths(ctx: Ctx) -> None:
    copy = ctx.acme_copy
    cases: list[tuple[str, Callable[[Path, Path, Path], tuple[list, Path | None]], bool]] = [
        ("backup onto master.key", lambda h, d, w: (["backup", h / "master.key"], h / "master.key"), True),
        ("backup onto the registry", lambda h, d, w: (["backup", h / "registry.sqlite"], h / "registry.sqlite"), True),
        ("backup onto registry.sqlite-wal", lambda h, d, w: (["backup", h / "registry.sqlite-wal"], None), False),
        ("trace-files --json master.key",
         lambda h, d, w: (["trace-files", copy, "--json", h / "master.key"], h / "master.key"), True),
        ("trace-files --json the registry",
         lambda h, d, w: (["trace-files", copy, "--json", h / "registry.sqlite"], h / "registry.sqlite"), True),
        ("backup onto the dataset's metadata.jsonl",
         lambda h, d, w: (["backup", d / "metadata.jsonl"], d / "metadata.jsonl"), True),
        ("trace-files --json the dataset's metadata.jsonl",
         lambda h, d, w: (["trace-files", copy, "--json", d / "metadata.jsonl"], d / "metadata.jsonl"), False),
        ("backup onto an existing file (no --force)", lambda h, d, w: (["backup", w / "precious.txt"],
                                                                       w / "precious.txt"), True),
        ("backup onto a symlink", lambda h, d, w: (["backup", w / "link"], w / "link"), True),
        ("backup onto a fifo", lambda h, d, w: (["backup", w / "fifo"], w / "fifo"), True),
        ("trace-files --json onto a fifo", lambda h, d, w: (["trace-files", copy, "--json", w / "fifo"], w / "fifo"),
         False),
        ("trace-files --json onto an existing file (no --force)",
         lambda h, d, w: (["trace-files", copy, "--json", w / "precious.txt"], w / "precious.txt"), False),
        ("trace-files --json into the traced copy",
         lambda h, d, w: (["trace-files", w / "leak", "--json", w / "leak" / "metadata.jsonl"],
                          w / "leak" / "metadata.jsonl"), False),
        ("backup onto the home folder", lambda h, d, w: (["backup", h], None), False),
        ("protect --out the home", lambda h, d, w: (["protect", d, "-l", "bob", "-o", h], None), False),
        ("protect --out master.key", lambda h, d, w: (["protect", d, "-l", "bob", "-o", h / "master.key"],
                                                      h / "master.key"), True),
        ("materialize --out the dataset", lambda h, d, w: (["materialize", "acme", "-o", d], None), False),
        ("restore master.key as a backup", lambda h, d, w: (["restore", h / "master.key"], h / "master.key"), True),
    ]
    for case, make, in_quick in cases:
        if ctx.quick and not in_quick:
            continue
        home = ctx.home(case, with_copy=True)
        work = home.parent
        data = ctx.data_copy(case + "-data")
        (work / "precious.txt").write_text("the user's own notes\n")
        (work / "victim.txt").write_text("a file the symlink points to\n")
        os.symlink(work / "victim.txt", work / "link")
        os.mkfifo(work / "fifo")
        shutil.copytree(copy, work / "leak")
        args, target = make(home, data, work)
        key0, rows0 = file_hash(home / "master.key"), registry_rows(home / "registry.sqlite")
        data0, target0 = tree_hash(data), file_hash(target) if target else None
        others0 = {p: file_hash(p) for p in (work / "precious.txt", work / "victim.txt", work / "link", work / "fifo")}
        leak0 = tree_hash(work / "leak")
        r = ctx.run(case, args, home=home, expect="refuse", timeout=60)
        check_unchanged(r, "master.key", key0, file_hash(home / "master.key"), "lost")
        check_unchanged(r, "the registry's rows", rows0, registry_rows(home / "registry.sqlite"), "lost")
        check_unchanged(r, "the input dataset", data0, tree_hash(data), "lost")
        check_unchanged(r, "the traced copy", leak0, tree_hash(work / "leak"), "silent-wrong")
        if target is not None and target.parent != home:
            check_unchanged(r, str(target.relative_to(work) if target.is_relative_to(work) else target), target0,
                            file_hash(target), "silent-wrong")
        for p, h in others0.items():
            if p != target:
                check_unchanged(r, p.name, h, file_hash(p), "silent-wrong")
        if ("data", "acme") not in (issued_in(home / "registry.sqlite") or set()):
            r.find("lost", "the registry no longer lists acme's copy afterwards")


# --- family 6: bad audit inputs ----------------------------------------------------------------
def family_audit_inputs(ctx: Ctx) -> None:
    home = ctx.home("audit", with_copy=True)
    work = home.parent
    ctx.run("audit --help", ["audit", "--help"], home=home, expect="ok")
    small = ["--n", "2", "--steps", "2", "--decoys", "100", "--device", "cpu", "--batch-size", "2"]

    def audit(case: str, model: Path | str, *extra, expect: str = "refuse", json_out: Path | None = None) -> Run:
        opts = list(small)
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in opts:
                opts[opts.index(flag) + 1] = value
            else:
                opts += [flag, value]
        key0 = file_hash(home / "master.key")
        r = ctx.run(case, ["audit", "--model", model, *opts, *(["--json", json_out] if json_out else [])],
                    home=home, expect=expect, timeout=300)
        check_unchanged(r, "master.key", key0, file_hash(home / "master.key"), "lost")
        return r

    def pipeline_without(name: str, part: str) -> Path:
        dst = ctx.tmp(name) / "pipe"
        shutil.copytree(STOCK_MODEL, dst, ignore=shutil.ignore_patterns(part) if part else None)
        return dst

    audit("--steps 0", STOCK_MODEL, "--steps", "0")
    r = audit("--guidance nan", STOCK_MODEL, "--guidance", "nan", json_out=work / "nan.json")
    if r.ok and "No watermark detected" in r.out:
        r.find("silent-wrong", "a NaN guidance scale produced a verdict")
    if not ctx.quick:
        audit("--seed -1", STOCK_MODEL, "--seed", "-1", expect="any")
        audit("model path does not exist", work / "no-such-model")
        audit("--json onto master.key", STOCK_MODEL, json_out=home / "master.key")
    audit("pipeline folder without its tokenizer", pipeline_without("no-tokenizer", "tokenizer"))
    if not ctx.quick:
        audit("--n 0", STOCK_MODEL, "--n", "0")
        audit("--batch-size 0", STOCK_MODEL, "--batch-size", "0")
        audit("--device cuda:7", STOCK_MODEL, "--device", "cuda:7")
        empty = ctx.tmp("no-images")
        ctx.run("--images on an empty folder", ["audit", "--images", empty, "--decoys", "100"], home=home,
                expect="refuse", timeout=120)

    # a pickled weights file that runs code when unpickled without weights_only
    import torch
    from safetensors.torch import load_file

    pipe = pipeline_without("pickled", "")
    state = load_file(str(pipe / "text_encoder" / "model.safetensors"))
    marker = work / "UNPICKLED"
    torch.save({**state, "_": _Unpickle(str(marker))}, pipe / "text_encoder" / "pytorch_model.bin")
    (pipe / "text_encoder" / "model.safetensors").unlink()
    r = audit("pickled text_encoder/pytorch_model.bin", pipe, expect="any")
    if marker.exists():
        r.find("silent-wrong", "unpickled a weights file with arbitrary code allowed (the payload ran)")


# --- family 7: secrets in what the tool wrote; marked files told apart by their container -------
def family_secrets(ctx: Ctx) -> None:
    from tracemark.registry.database import Registry
    from tracemark.evaluation.samples import sample_image
    from tracemark.marking.trigger import trigger_candidate

    data = ctx.data()
    home = ctx.home("secrets")
    work = home.parent
    produced: list[tuple[Run, list[Path]]] = []

    def run(case: str, args: list, files: list[Path] = (), expect: str = "ok", timeout: float = 180) -> Run:
        r = ctx.run(case, args, home=home, expect=expect, timeout=timeout)
        produced.append((r, list(files)))
        return r

    run("protect alice (trigger)", ["protect", data, "-l", "alice", "-o", work / "alice", "--rate", "0.2"],
        [work / "alice"])
    run("protect bob (ambient)", ["protect", data, "-l", "bob", "-o", work / "bob", "--rate", "0.3",
                                  "--strategy", "ambient"], [work / "bob"])
    if not ctx.quick:
        run("protect carol (tile, dataset trigger)", ["protect", data, "-l", "carol", "-o", work / "carol",
                                                      "--scheme", "tile", "--trigger-scope", "dataset"],
            [work / "carol"])
    run("copies", ["copies"])
    run("copies --json", ["copies", "--json"])
    run("licensees --json", ["licensees", "--json"])
    run("trace-files alice --json", ["trace-files", work / "alice", "--data", data, "--json", work / "t-alice.json"],
        [work / "t-alice.json"])
    run("trace-files bob --json", ["trace-files", work / "bob", "--json", work / "t-bob.json"], [work / "t-bob.json"])
    run("backup", ["backup", work / "backup.sqlite"], [work / "backup.sqlite"])
    run("materialize alice", ["materialize", "alice", "-o", work / "alice-again"], [work / "alice-again"])
    run("audit --images alice --report", ["audit", "--images", work / "alice", "--data", data, "--decoys", "100",
                                          "--json", work / "a-alice.json", "--report", work / "a-alice.html"],
        [work / "a-alice.json", work / "a-alice.html"], timeout=300)
    registry_files = [p for p in home.iterdir() if p.name.startswith("registry.sqlite")]

    reg = Registry(home)
    try:
        master = reg.master()
        copies = reg.copies(with_marked=False)
        keys = {c.licensee: reg.key_for_copy(c) for c in copies}
    finally:
        reg.close()
    secrets: dict[str, bytes] = {"master key (raw)": master, "master key (hex)": master.hex().encode(),
                                 "master key (HEX)": master.hex().upper().encode()}
    for lic, key in keys.items():
        secrets[f"{lic}'s key (raw)"] = key.secret
        secrets[f"{lic}'s key (hex)"] = key.secret.hex().encode()
    # trigger words that must not appear: an ambient copy's would-be words, and every trigger
    # copy's word outside its own copy
    triggers: dict[str, bytes] = {}
    for c in copies:
        if c.strategy == "ambient":
            for a in range(3):
                triggers[f"{c.licensee}'s unused trigger word #{a}"] = trigger_candidate(keys[c.licensee], a).encode()
        elif c.params.get("trigger_scope", "licensee") == "licensee":
            triggers[f"{c.licensee}'s trigger word"] = trigger_candidate(
                keys[c.licensee], int(c.params.get("trigger_attempt", 0))).encode()

    def scan(blob: bytes, where: str, run: Run, copy_of: str | None = None) -> None:
        """Key bytes anywhere; trigger words only inside a licensee's copy that is not their own
        trigger copy (an owner's report may name the word it tested)."""
        for what in secret_hits(blob, secrets):
            run.find("lost", f"{what} found in {where}")
        if copy_of is not None:
            for what in secret_hits(blob, {k: v for k, v in triggers.items() if k != f"{copy_of}'s trigger word"}):
                run.find("lost", f"{what} found in {where}")

    for r, files in produced:
        scan(r.text.encode("utf-8", "replace"), "its terminal output", r)
        for f in files:
            if f.is_dir():
                for p in (p for p in f.rglob("*") if p.is_file()):
                    scan(p.read_bytes(), str(p.relative_to(work)), r, copy_of=f.name.split("-")[0])
            elif f.is_file():
                scan(f.read_bytes(), str(f.relative_to(work)), r)
    scanner = ctx.pseudo("scan: registry files")
    for p in registry_files + [p for p in home.iterdir() if p.name.startswith("registry.sqlite")]:
        if p.is_file():
            scan(p.read_bytes(), str(p.relative_to(work)), scanner)
    own = triggers.get("alice's trigger word", b"")  # positive control: the search must see this one
    if not own or not secret_hits((work / "alice" / "metadata.jsonl").read_bytes(), {"own": own}):
        scanner.find("failed", "self-check: alice's trigger word was not found in alice's own copy (search broken)")

    # structure: can a licensee tell marked files from unmarked ones by their container alone?
    def make_struct(p: Path) -> None:
        rng = np.random.default_rng(11)
        p.mkdir(parents=True)
        rows = []
        exif = Image.Exif()
        exif[0x0131] = "Camera Firmware 1.0"  # Software
        for i in range(40 if ctx.quick else 80):
            arr, caption = sample_image(rng, 96)  # large enough for libpng's 8 KiB IDAT split
            buf = io.BytesIO()
            if i % 2 == 0:
                Image.fromarray(arr).save(buf, "PNG", compress_level=int(rng.choice([1, 6, 9])))
                blob = libpng_like(buf.getvalue(), extra=[(b"pHYs", (2835).to_bytes(4, "big") * 2 + b"\x01"),
                                                          (b"tEXt", b"Software\x00ImageMagick 7")])
                name = f"{i:05d}.png"
            else:
                Image.fromarray(arr).save(buf, "JPEG", quality=int(rng.choice([85, 92])), exif=exif,
                                          optimize=bool(rng.integers(2)))
                blob = buf.getvalue()
                name = f"{i:05d}.jpg"
            (p / name).write_bytes(blob)
            rows.append({"file_name": name, "text": caption})
        (p / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    struct = ctx.fixture("struct", make_struct)
    r = ctx.run("protect for the structure test", ["protect", struct, "-l", "dora", "-o", work / "dora", "--rate",
                                                   "0.5"], home=home, expect="ok")
    if not r.ok:
        return
    reg = Registry(home)
    try:
        marked = {m["file_name"] for c in reg.copies() if c.licensee == "dora" for m in c.marked}
    finally:
        reg.close()
    for f, v, m in telling_features(work / "dora", struct, marked):
        r.find("silent-wrong", f"{f}={v} occurs in {m} marked file(s) and no unmarked one: marked files can be "
                               "told apart without the key")


def telling_features(copy: Path, source: Path, marked: set[str]) -> list[tuple[str, str, int]]:
    """(feature, value, marked files with it) for container feature values that occur only among
    the copy's marked files and that marking produced (a marked file's source had another value):
    a licensee could pick the marked files out without the key. Values the sources happened to
    share only with files the key chose are chance, not a tell."""
    counts: dict[tuple[str, str], list[int]] = {}
    produced: set[tuple[str, str]] = set()
    for p in sorted(copy.iterdir()):
        if p.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        src = file_features(source / p.name) if (source / p.name).is_file() else {}
        for feat, value in file_features(p).items():
            counts.setdefault((feat, value), [0, 0])[0 if p.name in marked else 1] += 1
            if p.name in marked and src.get(feat) != value:
                produced.add((feat, value))
    return [(f, v, m) for (f, v), (m, u) in sorted(counts.items()) if m and not u and (f, v) in produced]


FAMILIES: dict[str, tuple[str, Callable[[Ctx], None]]] = {
    "1": ("bad-inputs", family_bad_inputs),
    "2": ("registry-and-key", family_registry_and_key),
    "3": ("kill-9", family_kill9),
    "4": ("restore-races", family_restore_race),
    "5": ("output-paths", family_output_paths),
    "6": ("audit-inputs", family_audit_inputs),
    "7": ("secrets-and-structure", family_secrets),
}


# --- summary ---------------------------------------------------------------------------------
def summarize(runs: list[Run], families: list[str]) -> dict:
    """Per-family counts (a run counts once in each category it falls in) and the offending runs."""
    table: dict[str, dict[str, int]] = {}
    offending = []
    for key in families:
        table[f"{key} {FAMILIES[key][0]}"] = {"runs": 0, **{c: 0 for c in CATEGORIES}}
    for run in runs:
        row = table.setdefault(run.family, {"runs": 0, **{c: 0 for c in CATEGORIES}})
        if run.cmd:
            row["runs"] += 1
        cats = classify(run)
        for c in cats:
            row[c] += 1
        if cats:
            first, last = first_last(run.text)
            offending.append({"family": run.family, "case": run.case, "command": run.shown(), "rc": run.rc,
                              "categories": sorted(cats), "why": [w for c in CATEGORIES for w in cats.get(c, [])],
                              "first_line": first, "last_line": last, "seconds": round(run.seconds, 2)})
    totals = {"runs": sum(r["runs"] for r in table.values()), **{c: sum(r[c] for r in table.values())
                                                                 for c in CATEGORIES}}
    return {"families": table, "totals": totals, "offending": offending}


def print_summary(summary: dict) -> None:
    cols = ("runs",) + CATEGORIES
    width = max([len("family")] + [len(k) for k in summary["families"]]) + 2
    print("\n" + "family".ljust(width) + "".join({"traceback": "tracebacks"}.get(c, c).rjust(14) for c in cols))
    for name, row in list(summary["families"].items()) + [("TOTAL", summary["totals"])]:
        print(name.ljust(width) + "".join(str(row[c]).rjust(14) for c in cols))
    print(f"\n{len(summary['offending'])} offending run(s):")
    for o in summary["offending"]:
        print(f"\n[{o['family']}] {o['case']}  (exit {o['rc']}; {', '.join(o['categories'])})")
        for why in o["why"]:
            print(f"    - {why}")
        print(f"    $ {o['command']}")
        if o["first_line"]:
            print(f"    first: {o['first_line']}")
            if o["last_line"] != o["first_line"]:
                print(f"    last:  {o['last_line']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs per family (a few minutes)")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated family numbers, e.g. 1,5")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random delays and choices")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (to reproduce a run by hand)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run (exit status, last line)")
    args = ap.parse_args(argv)
    wanted = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in wanted if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    root = Path(tempfile.mkdtemp(prefix="tracemark-hostile-"))
    ctx = Ctx(root, args.seed, args.quick)
    ctx.verbose = args.verbose
    t_start = time.monotonic()
    crashed: dict[str, str] = {}
    try:
        for key in wanted:
            name = f"{key} {FAMILIES[key][0]}"
            ctx.family = name
            t0 = time.monotonic()
            n0 = len(ctx.runs)
            print(f"family {name} ...", end=" ", flush=True)
            try:
                FAMILIES[key][1](ctx)
            except Exception as exc:  # a crash of the harness is a fault of the family, not the end
                tb = traceback.format_exc()
                crashed[name] = tb
                run = Run(name, f"family crashed: {exc.__class__.__name__}: {exc}"[:200], [], "", "any", rc=None)
                run.find("failed", "the family's own code crashed (see the traceback under 'crashed' in --out)")
                run.err = tb.strip().splitlines()[-1]
                ctx.runs.append(run)
            print(f"{chr(10) if args.verbose else ''}{len(ctx.runs) - n0} runs, {time.monotonic() - t0:.0f} s",
                  flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            for dirpath, dirnames, _ in os.walk(root):  # read-only folders a case left behind
                for d in dirnames:
                    try:
                        os.chmod(os.path.join(dirpath, d), 0o700)
                    except OSError:
                        pass
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(ctx.runs, wanted)
    print_summary(summary)
    for line in ctx.skipped:
        print(f"skipped: {line}")
    rerun = [os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable,
             os.path.relpath(__file__) if os.path.abspath(__file__).startswith(os.getcwd()) else __file__]
    rerun += (["--quick"] if args.quick else []) + ["--families", ",".join(wanted), "--seed", str(args.seed)]
    rerun += ["--out", str(args.out)] if args.out else []
    summary.update({"seed": args.seed, "quick": args.quick, "elapsed_s": round(time.monotonic() - t_start, 1),
                    "crashed": crashed, "skipped": ctx.skipped, "rerun": "OMP_NUM_THREADS=1 " + shlex.join(rerun)})
    t = summary["totals"]
    print(f"\n{t['runs']} runs in {summary['elapsed_s']:.0f} s: {t['traceback']} traceback(s), "
          f"{t['silent-wrong']} silent-wrong, {t['lost']} lost, {t['failed']} failed (target: 0 / 0 / 0)")
    print(f"rerun: {summary['rerun']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary written to {args.out}")
    return 1 if t["traceback"] or t["silent-wrong"] or t["lost"] or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
