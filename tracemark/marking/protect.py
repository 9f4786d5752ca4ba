"""Issue a watermarked copy of a dataset to one licensee.

Only the key-selected fraction of samples is decoded and marked (on a process pool); every
other file is copied byte for byte. The copy is assembled in a hidden temporary folder next to
the output and renamed into place only when complete. The registry row is committed as
*pending* before the rename and marked *issued* after it, so whatever fails or is killed in
between, the next run finds either nothing or a pending row (which it drops, with the folder that
row announced) and re-creates the identical copy; temporary folders of dead runs are removed.
Pool workers die with their parent. The input is only ever read.

The writing stage (:func:`write_copy`) is shared with :mod:`tracemark.marking.materialize`, which
re-derives an issued copy from its registry row, the original data and the master key.

Harm is measured on the files as written (decoded back), not on the array before encoding.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracemark.errors import TracemarkError
from tracemark.io.dataset import (MAX_PIXELS, Dataset, FileChecks, Sample, check_image_header, content_hash, is_inside,
                                  load_dataset, read_image, unlisted_files, write_metadata)
from tracemark.io.imaging import dhash, save_like
from tracemark.io.jpegdct import JPEG_WRITER
from tracemark.marking.engine import PROGRESS_EVERY, check_engine, run_jobs
from tracemark.marking.forecast import Forecast, forecast
from tracemark.marking.metrics import ssim
from tracemark.marking.schemes import DEFAULT_SCHEME, get_scheme
from tracemark.marking.selection import SELECTION_VERSION, check_rate, image_thumbnails, select_samples
from tracemark.marking.trigger import (DATASET_TRIGGER_ID, TRIGGER_SCOPES, apply_trigger, check_strategy, trigger_word,
                                       vocabulary)
from tracemark.registry.database import Registry
from tracemark.registry.keys import Key


#: SSIM costs about what marking a file costs (512 px JPEG: ~13 ms vs ~10 ms); above this many marked
#: images it is measured on a sample (the PSNR on every file).
SSIM_SAMPLE = 16

# The product's defaults are the configuration measured to be detected through a LoRA fine-tune
# (docs/learnability.md, tracemark/data/power_curve.json): the spread scheme at 3.15/255, whole
# keyed clusters of look-alike images, 2% of the samples but never fewer than DEFAULT_MIN_MARKED
# (power follows the number of marked samples, not the rate). The curve was measured at 3.2/255
# (38.03 dB before rounding); rounding and a JPEG's requantisation then left some written files
# at 37.9 dB, so the default is 1.6% weaker: 38.17 dB before rounding, >= 38 dB on the files.
DEFAULT_RATE = 0.02
DEFAULT_SELECTION = "visual"
DEFAULT_STRENGTH = {"spread": 3.15}
#: The smallest count at which every measured domain was detected (power_curve.json: 40 marked
#: samples named 3 of 5 face models and 0 of 1 unseen; 50 named 5/5, 2/2 and 1/2).
DEFAULT_MIN_MARKED = 50
#: ``min_marked`` never raises a copy above this fraction of its samples (small datasets are told
#: by the forecast that they cannot reach the measured count instead).
MAX_MIN_MARKED_RATE = 0.10


def marked_count(n_samples: int, rate: float, min_marked: int = 0) -> int:
    """How many of ``n_samples`` a copy marks: ``rate`` of them (at least one), raised to
    ``min_marked`` but never above :data:`MAX_MIN_MARKED_RATE` of the samples by that raise."""
    n = max(1, int(round(rate * n_samples)))
    floor = min(int(min_marked), int(MAX_MIN_MARKED_RATE * n_samples))
    return min(n_samples, max(n, floor))


def selection_rate(n_samples: int, rate: float, min_marked: int = 0) -> float:
    """The rate the selection functions get so that they pick exactly :func:`marked_count` samples."""
    return marked_count(n_samples, rate, min_marked) / max(1, n_samples)


@dataclass
class ProtectResult:
    out_dir: Path
    dataset: str
    licensee: str
    copy_id: int
    scheme: str
    strategy: str
    rate: float
    n_samples: int
    n_marked: int
    psnr_mean: float
    psnr_min: float
    ssim_mean: float
    skipped: list[str] = field(default_factory=list)
    #: what the measured power curve says about detecting this many marked samples through a model
    forecast: Forecast | None = None
    #: the columns read (recorded with the copy); ``columns_note``: which were found, not given
    caption_column: str = "text"
    image_column: str = "file_name"
    columns_note: str | None = None
    #: how the unmarked files were written ({"copy": n} by default; see :data:`LINK_MODES`)
    placed: dict[str, int] = field(default_factory=dict)


@dataclass
class CopyPlan:
    """What ``protect`` would do, before anything is read beyond the metadata (``--dry-run``)."""

    dataset: str
    n_samples: int
    n_marked: int
    rate: float
    min_marked: int
    capped: bool  # min_marked could not be reached within MAX_MIN_MARKED_RATE of the samples
    scheme: str
    strength: float
    selection: str
    forecast: Forecast
    columns_note: str | None = None


def default_scheme(scheme: str, strength: float | None, params: dict):
    """The scheme a copy uses: ``strength`` or ``-p strength=``, else the product's default for it."""
    if strength is None and "strength" not in params:
        strength = DEFAULT_STRENGTH.get(scheme)
    return get_scheme(scheme, **{"strength": strength, **{k: v for k, v in params.items() if v is not None}})


def check_min_marked(min_marked: int) -> int:
    if isinstance(min_marked, bool) or not isinstance(min_marked, int) or min_marked < 0:
        raise TracemarkError(f"min_marked must be a whole number >= 0, got {min_marked!r}", params=("min_marked",))
    return min_marked


def plan_copy(data_dir: str | Path, *, dataset_name: str | None = None, scheme: str = DEFAULT_SCHEME,
              rate: float = DEFAULT_RATE, selection: str = DEFAULT_SELECTION, strength: float | None = None,
              scheme_params: dict | None = None, min_marked: int = DEFAULT_MIN_MARKED,
              caption_column: str | None = None, image_column: str | None = None) -> CopyPlan:
    """How many samples a copy of ``data_dir`` would mark and what the measurements say about
    detecting them; reads the metadata only (no image is decoded, nothing is written)."""
    check_rate(rate)
    check_min_marked(min_marked)
    params = dict(scheme_params or {})
    sch = default_scheme(scheme, strength, params)
    ds = load_dataset(data_dir, caption_column, image_column)
    n = len(ds)
    k = marked_count(n, rate, min_marked)
    return CopyPlan(dataset_name or Path(data_dir).resolve().name, n, k, rate, min_marked, k < min(min_marked, n),
                    sch.name, float(sch.strength), selection, forecast(k), ds.columns_note())


_SCHEME_CACHE: dict[str, object] = {}


def _cached_scheme(name: str, params: dict):
    """One scheme object per worker process, so its pattern cache survives across files."""
    sig = name + repr(sorted(params.items()))
    if sig not in _SCHEME_CACHE:
        _SCHEME_CACHE[sig] = get_scheme(name, **params)
    return _SCHEME_CACHE[sig]


def mark_file(src: str, dst: str, scheme_name: str, scheme_params: dict, secret: bytes,
              max_pixels: int = MAX_PIXELS, with_ssim: bool = True, measure: bool = True,
              jpeg_writer: int = 1) -> dict:
    """Mark one image file (runs in a worker process). Errors are returned, not raised. The harm
    (PSNR, SSIM) is measured on the file as written, decoded back; ``measure=False`` (re-deriving a
    copy whose harm is on record) skips that decode. ``jpeg_writer``: the DCT-domain writer the copy
    records (:data:`tracemark.io.jpegdct.JPEG_WRITER`): from 2 on, a JPEG marked by a fixed pattern
    gets the pattern's coefficient change computed once per key, size and tables."""
    from tracemark.errors import TracemarkError as _TE

    try:
        original, pil = read_image(Path(src), max_pixels, dtype=np.uint8)
        scheme = _cached_scheme(scheme_name, scheme_params)
        key = Key(secret)
        h, w = original.shape[:2]
        written = (pil.format == "JPEG" and jpeg_writer >= 2 and scheme.additive_pattern(key, h, w) is not None
                   and _write_jpeg_pattern(src, dst, scheme, key, scheme_name, scheme_params))
        if not written:
            marked = scheme.embed_uint8(original, key)
            if not (pil.format == "JPEG" and _write_jpeg_dct(src, dst, marked.astype(np.float64) - original)):
                save_like(marked, pil, Path(dst))
        out = {"src": src, "psnr": float("nan"), "ssim": None, "dhash": dhash(pil), "error": None,
               "pixels": int(h * w)}
        if not measure:
            return out
        marked, _ = read_image(Path(dst), max_pixels, dtype=np.uint8)  # the harm of what the user gets
        diff = marked.astype(np.int16)
        diff -= original
        np.square(diff, out=diff)  # |diff| <= 255 would overflow only for absurd strengths
        mse = float(diff.sum(dtype=np.int64)) / diff.size
        out["psnr"] = 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
        if with_ssim:
            out["ssim"] = ssim(original, marked)
        return out
    except _TE as exc:
        return {"src": src, "error": str(exc)}
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT, errno.EPERM):  # the output's fault
            return {"src": src, "error": f"{dst}: cannot write ({exc.strerror})"}
        return {"src": src, "error": f"{src}: cannot mark ({exc.__class__.__name__}: {exc})"}
    except Exception as exc:  # any decoder surprise still names the file
        return {"src": src, "error": f"{src}: cannot mark ({exc.__class__.__name__}: {exc})"}


def _write_jpeg_dct(src: str, dst: str, delta: np.ndarray) -> bool:
    """JPEG sources are marked in the DCT domain (no re-encoding loss; :mod:`tracemark.io.jpegdct`)."""
    from tracemark.io import jpegdct

    if not jpegdct.available():
        return False
    tmp = Path(dst).with_name(Path(dst).name + ".part")
    if not jpegdct.write_marked_jpeg(src, tmp, delta):
        return False
    os.replace(tmp, dst)
    return True


def _write_jpeg_pattern(src: str, dst: str, scheme, key: Key, scheme_name: str, scheme_params: dict) -> bool:
    """A fixed-pattern mark in the DCT domain (writer 2); False where that writer cannot."""
    from tracemark.io import jpegdct

    if not jpegdct.available():
        return False
    tmp = Path(dst).with_name(Path(dst).name + ".part")
    pattern_id = (key.key_id, scheme_name, repr(sorted(scheme_params.items())))
    if not jpegdct.write_pattern_jpeg(src, tmp, lambda h, w: scheme.additive_pattern(key, h, w), pattern_id):
        return False
    os.replace(tmp, dst)
    return True


#: How the unmarked files of a copy are written: ``copy`` (default; the kernel's copy where it can),
#: ``reflink`` (a copy-on-write clone: btrfs, XFS, APFS-like filesystems; a plain copy elsewhere) or
#: ``hard`` (a hard link to the original: no space, no I/O, but the copy's unmarked files ARE the
#: original files, so whoever writes to one in place writes to the original; tracemark never writes
#: to a copy's files after issuing it; a plain copy where the filesystem refuses links).
LINK_MODES = ("copy", "reflink", "hard")
_FICLONE = 0x40049409  # Linux ioctl: clone a file's extents


def check_link(link: str) -> str:
    if link not in LINK_MODES:
        raise TracemarkError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}", params=("link",))
    return link


def place_file(src: str, dst: str, link: str = "copy") -> str:
    """Put ``src``'s bytes at ``dst`` by ``link`` (:data:`LINK_MODES`); returns what was done
    (``copy`` where the filesystem refused a link or clone)."""
    if link == "hard":
        try:
            os.link(src, dst, follow_symlinks=True)
            return "hard"
        except OSError:
            pass
    elif link == "reflink":
        import fcntl

        try:
            with open(src, "rb") as fi, open(dst, "wb") as fo:
                fcntl.ioctl(fo.fileno(), _FICLONE, fi.fileno())
            return "reflink"
        except OSError:
            Path(dst).unlink(missing_ok=True)
    shutil.copyfile(src, dst)  # sendfile / copy_file_range: in the kernel
    return "copy"


def copy_file(src: str, dst: str, max_pixels: int = MAX_PIXELS, validate: bool = True, link: str = "copy") -> dict:
    """Copy an unmarked image's bytes unchanged; with ``validate`` decode it fully first (a truncated
    file is an error whatever the key), which the dataset pass (:class:`FileChecks`) makes needless
    for a file it already decoded and that is unchanged since."""
    try:
        pixels = None
        if validate:
            arr, _ = read_image(Path(src), max_pixels, dtype=np.uint8)
            pixels = int(arr.shape[0] * arr.shape[1])
        how = place_file(src, dst, link)
        return {"src": src, "error": None, "pixels": pixels, "how": how}
    except TracemarkError as exc:
        return {"src": src, "error": str(exc)}
    except OSError as exc:
        return {"src": src, "error": f"{dst if exc.filename == dst else src}: cannot copy ({exc.strerror or exc})"}


def process_file(job: tuple) -> dict:
    """Pool entry point: ``("mark", ...)`` or ``("copy", ...)`` job tuples."""
    kind, *args = job
    return mark_file(*args) if kind == "mark" else copy_file(*args)


TMP_TAG = ".tracemark-tmp-"
#: ``.<out name>.tracemark-tmp-<pid>-<8 hex>[-<host tag>]``: what :func:`temp_sibling` names.
_TMP_NAME = re.compile(r"^\.(?P<out>.+)" + re.escape(TMP_TAG) + r"(?P<pid>\d+)-[0-9a-f]{8}(?:-(?P<host>[0-9a-f]{8}))?$")


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p that returns the folders it created (outermost first), to remove them on failure."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _host_tag() -> str:
    """8 hex digits of this machine's name: a pid means something only on the machine that made it."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_sibling(out_dir: Path) -> Path:
    """The temporary folder an output is assembled in (same filesystem: the final rename is atomic;
    the pid and host in its name let a later run on this machine remove it once this process is gone)."""
    return out_dir.parent / f".{out_dir.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}-{_host_tag()}"


def rename_into_place(tmp: Path, out_dir: Path) -> None:
    """Atomically rename a finished temporary folder to ``out_dir``; one-line errors."""
    try:
        os.rename(tmp, out_dir)
    except OSError as exc:
        if out_dir.exists():
            raise TracemarkError(f"{out_dir}: another run wrote this folder meanwhile; choose a new one") from None
        raise TracemarkError(f"{out_dir}: cannot create the copy here ({exc.strerror or exc})") from None


def remove_empty(created: list[Path], tmp: Path) -> None:
    """After a failure: remove the temporary folder, then the parent folders the run made
    (innermost first) as long as they are empty."""
    shutil.rmtree(tmp, ignore_errors=True)
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # someone else's process, or a pid we cannot ask about
        return True
    return True


def _remove_stale_temps(out_dir: Path) -> None:
    """Remove the temporary folders beside ``out_dir`` of earlier runs, for any output folder and any
    licensee, whose process is gone (a killed run leaves up to a whole copy there). Only folders named
    exactly as :func:`temp_sibling` names them and made on this machine are touched; a live pid (or a
    reused one) keeps its folder."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    host = _host_tag()
    try:
        entries = list(parent.glob(f".*{TMP_TAG}*"))
    except OSError:
        return
    for p in entries:
        m = _TMP_NAME.match(p.name)
        if m is None or p.is_symlink() or not p.is_dir():
            continue
        if m["host"] is not None and m["host"] != host:  # another machine's run (a shared filesystem)
            continue
        if not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)


def _params(what: str) -> tuple[str, ...]:
    """``what`` as the ``params`` of an error: an argument's name, or () for a description."""
    return (what,) if what.isidentifier() else ()


def check_name(value: str, what: str) -> str:
    """A licensee or dataset name: non-empty, no leading or trailing whitespace, and no control or
    invisible format characters (a newline or ESC in a name would reach every terminal and report
    that prints it, and two names differing only by an invisible character would look alike)."""
    if not isinstance(value, str) or not value:
        raise TracemarkError(f"{what} must be a non-empty name", params=_params(what))
    shown = ascii(value)
    if value != value.strip():
        raise TracemarkError(f"{what} {shown}: leading or trailing whitespace", params=_params(what))
    bad = next((ch for ch in value if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")), None)
    if bad is not None:
        raise TracemarkError(f"{what} {shown}: control or invisible character U+{ord(bad):04X} not allowed in a name",
                             params=_params(what))
    return value


def _check_trigger_captions(ds: Dataset) -> None:
    """With a trigger, every caption must hold text: a marked sample's caption would otherwise be the
    trigger word alone, a caption that gives the mark away. Refused for every sample, not only the
    ones the key selects, so the same dataset is accepted or refused whatever the licensee; empty
    captions stay legitimate for ``--strategy ambient`` (captions untouched)."""
    blank = [s for s in ds.samples if not s.text.strip()]
    if blank:
        s = blank[0]
        more = f" (and {len(blank) - 1} more)" if len(blank) > 1 else ""
        raise TracemarkError(f"{s.metadata_file}:{s.line}: empty caption{more}; with strategy trigger a marked "
                             "sample's caption would be the trigger word alone: write captions, or use strategy "
                             "ambient", params=("strategy",))


#: Files of each kind listed one by one in ``skipped``; the rest are counted in one line.
UNLISTED_SHOWN = 20


def _unlisted_report(ds: Dataset) -> list[str]:
    """``skipped`` lines for the files of the dataset folder that the copy leaves out because no
    metadata row names them (as Hugging Face imagefolder, which trains on the rows, ignores them)."""
    images, other, hidden = unlisted_files(ds)
    lines: list[str] = []
    for files, why in ((images, "image not named in any metadata file"),
                       (other, "not an image, and no metadata row names it")):
        lines += [f"{p}: {'broken symlink or symlink loop' if p.is_symlink() and not p.exists() else why}; "
                  "left out of the copy" for p in files[:UNLISTED_SHOWN]]
        if len(files) > UNLISTED_SHOWN:
            lines.append(f"{ds.root}: {len(files) - UNLISTED_SHOWN} more file(s) of this kind ({why}) left out")
    if hidden:
        lines.append(f"{ds.root}: {len(hidden)} hidden file(s) or folder(s) (names starting with '.', e.g. "
                     f"{hidden[0].name}) left out of the copy")
    return lines


def _check_paths(data_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        raise TracemarkError(f"{out_dir}: output folder already exists; choose a new one")
    if is_inside(out_dir, data_dir):
        raise TracemarkError(f"{out_dir}: output folder lies inside the input dataset {data_dir}")
    if is_inside(data_dir, out_dir):
        raise TracemarkError(f"{out_dir}: the input dataset lies inside the output folder")


@dataclass
class WrittenCopy:
    """What :func:`write_copy` put in its folder: the marked samples' records (file_name, dhash,
    psnr, ssim, original text) and the marked samples left out because marking them failed."""

    marked: list[dict]
    failed_marked: set[str]
    #: how the unmarked files were written: {"copy" | "reflink" | "hard": count} (a refused link is a copy)
    placed: dict[str, int] = field(default_factory=dict)


def usable_samples(ds: Dataset, data_dir: Path, max_pixels: int, on_error: str, skipped: list[str],
                   checks: FileChecks | None = None) -> list[Sample]:
    """The samples whose image header passes the cheap checks (mode, size, EXIF rotation, bombs);
    with ``on_error="skip"`` the others are listed in ``skipped``, else the first one raises. A file
    the dataset pass (``checks``) decoded fully and that is unchanged since is not opened again."""
    valid = []
    for s in ds.samples:
        if checks is not None and checks.decoded(s.path, max_pixels):
            valid.append(s)
            continue
        try:
            check_image_header(s.path, max_pixels).close()
            valid.append(s)
        except TracemarkError as exc:
            if on_error == "fail":
                raise
            skipped.append(str(exc))
    if not valid:
        raise TracemarkError(f"{data_dir}: no usable images left after skipping errors")
    return valid


def write_copy(ds: Dataset, valid: list[Sample], marked_ids: set[str], tmp: Path, *, scheme_name: str,
               scheme_params: dict, secret: bytes, trigger: str | None, on_error: str, skipped: list[str],
               max_pixels: int = MAX_PIXELS, workers: int | None = None, engine: str = "local",
               address: str | None = None, progress: Callable[[int, int], None] | None = None,
               ssim_sample: int = SSIM_SAMPLE, checks: FileChecks | None = None, link: str = "copy",
               measure: bool = True, jpeg_writer: int = 1) -> WrittenCopy:
    """The writing stage of a copy, shared by ``protect`` and ``materialize`` so that a copy
    re-derived from the registry is the issued one bit for bit: mark ``marked_ids`` and copy the
    other ``valid`` samples into ``tmp`` (jobs on ``engine``), then write the metadata files with
    ``trigger`` prepended to the marked captions. Failures are raised, or with ``on_error="skip"``
    listed in ``skipped`` and the sample left out.

    Every image is decoded once (truncation is caught whether or not the key marks it), but only
    once per dataset: with ``checks`` an unmarked file that decoded fully before and is unchanged
    since (size, mtime, inode) is only copied (in this process: the kernel copies it), so a copy
    at 2% decodes its marked samples and the files never checked. ``link``: how the unmarked files
    are written (:data:`LINK_MODES`). ``jpeg_writer``: the copy's DCT-domain writer
    (:data:`tracemark.io.jpegdct.JPEG_WRITER` for a new copy; 1 for copies that record none)."""
    check_link(link)
    to_mark = [s for s in valid if s.file_name in marked_ids]
    valid_ids = {s.file_name for s in valid}
    jobs, job_samples, direct = [], [], []
    n_mark = 0
    made: set[Path] = set()
    for s in valid:
        parent = (tmp / s.file_name).parent
        if parent not in made:
            parent.mkdir(parents=True, exist_ok=True)
            made.add(parent)
        if s.file_name in marked_ids:
            jobs.append(("mark", str(s.path), str(tmp / s.file_name), scheme_name, scheme_params, secret, max_pixels,
                         n_mark < ssim_sample, measure, jpeg_writer))
            n_mark += 1
            job_samples.append(s)
        elif checks is not None and checks.decoded(s.path, max_pixels):
            direct.append(s)
        else:
            jobs.append(("copy", str(s.path), str(tmp / s.file_name), max_pixels, True, link))
            job_samples.append(s)
    total = len(jobs) + len(direct)
    counts = [0, 0]  # jobs done, direct copies done

    def tick(which: int, n: int) -> None:
        counts[which] = n
        done = counts[0] + counts[1]
        if progress and (n % PROGRESS_EVERY == 0 or done == total):
            progress(done, total)

    direct_results: list[dict] = []

    def copy_direct() -> None:
        """The files the dataset pass vouches for are only copied, in this process (the kernel
        copies them) while the workers mark: in this thread, never in another one beside a fork."""
        for s in direct:
            direct_results.append(copy_file(str(s.path), str(tmp / s.file_name), max_pixels, False, link))
            tick(1, len(direct_results))

    job_results = run_jobs(jobs, process_file, engine=engine, workers=workers, address=address,
                           progress=(lambda done, _: tick(0, done)) if progress else None, meanwhile=copy_direct)
    by_name = {s.file_name: r for s, r in zip(job_samples, job_results)}
    by_name.update({s.file_name: r for s, r in zip(direct, direct_results)})
    results = [by_name[s.file_name] for s in valid]
    if checks is not None:
        for s, r in zip(job_samples, job_results):
            if not r["error"] and r.get("pixels"):
                checks.update(s.path, pixels=r["pixels"])
    bad_unmarked = set()
    for s, r in zip(valid, results):
        if r["error"] and s.file_name not in marked_ids:
            if on_error == "fail":
                raise TracemarkError(r["error"])
            skipped.append(r["error"])
            bad_unmarked.add(s.file_name)
            (tmp / s.file_name).unlink(missing_ok=True)
    valid_ids -= bad_unmarked
    by_src = {r["src"]: r for r in results}
    marked_records = []
    for s in to_mark:
        r = by_src[str(s.path)]
        if r["error"]:
            if on_error == "fail":
                raise TracemarkError(r["error"])
            skipped.append(r["error"])
            (tmp / s.file_name).unlink(missing_ok=True)
            continue
        marked_records.append({"file_name": s.file_name, "dhash": r["dhash"], "psnr": round(r["psnr"], 2),
                               "ssim": r["ssim"], "text": s.text})
    if not marked_records:
        raise TracemarkError(f"{ds.root}: no sample could be marked")
    good_marked = {m["file_name"] for m in marked_records}
    skipped_files = {s.file_name for s in to_mark} - good_marked

    # metadata: same files, same layout; the trigger goes into marked captions only
    for meta in ds.metadata_files:
        rows = []
        for s in ds.samples:
            if s.metadata_file != meta or s.file_name in skipped_files or s.file_name not in valid_ids:
                continue
            text = s.text
            if trigger and s.file_name in good_marked:
                text = apply_trigger(text, trigger)
            rel_name = Path(s.path).relative_to(meta.parent).as_posix()
            rows.append({ds.image_column: rel_name, ds.caption_column: text, **s.extra})
        write_metadata(tmp / meta.relative_to(ds.root), rows)
    placed: dict[str, int] = {}
    for r in results:
        if not r["error"] and "how" in r:
            placed[r["how"]] = placed.get(r["how"], 0) + 1
    return WrittenCopy(marked_records, skipped_files, placed)


def protect(
    data_dir: str | Path,
    out_dir: str | Path,
    licensee: str,
    *,
    registry: Registry,
    dataset_name: str | None = None,
    scheme: str = DEFAULT_SCHEME,
    strategy: str = "trigger",
    trigger_scope: str = "licensee",
    rate: float = DEFAULT_RATE,
    selection: str = DEFAULT_SELECTION,
    strength: float | None = None,
    scheme_params: dict | None = None,
    min_marked: int = DEFAULT_MIN_MARKED,
    on_error: str = "fail",
    workers: int | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    address: str | None = None,
    reissue: bool = False,
    caption_column: str | None = None,
    image_column: str | None = None,
    link: str = "copy",
) -> ProtectResult:
    """Issue ``licensee`` a marked copy of the dataset at ``data_dir`` into ``out_dir``. The per-file
    work runs on ``engine`` (:mod:`tracemark.marking.engine`: this machine's pool, or Ray at ``address``).
    The defaults are the measured working configuration (see :data:`DEFAULT_MIN_MARKED`).
    ``caption_column`` / ``image_column``: the metadata's columns (default: found, see
    :func:`tracemark.io.dataset.load_dataset`); recorded with the copy, kept under their names in it.
    ``link``: how unmarked files are written (:data:`LINK_MODES`; ``hard`` shares the original's inode)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    check_engine(engine)
    check_link(link)
    check_strategy(strategy)
    check_rate(rate)
    check_min_marked(min_marked)
    if on_error not in ("fail", "skip"):
        raise TracemarkError(f"on_error must be 'fail' or 'skip', got {on_error!r}", params=("on_error",))
    check_name(licensee, "licensee")
    if dataset_name is not None:
        check_name(dataset_name, "dataset_name")
    params = dict(scheme_params or {})
    if "strength" in params and strength is not None and params["strength"] != strength:
        raise TracemarkError(f"strength given twice: strength {strength:g} and scheme_params "
                             f"strength={params['strength']}", params=("strength", "scheme_params"))
    sch = default_scheme(scheme, strength, params)
    ds: Dataset = load_dataset(data_dir, caption_column, image_column)
    name = dataset_name or data_dir.resolve().name
    if dataset_name is None:
        try:
            check_name(name, "dataset name")
        except TracemarkError as exc:
            raise TracemarkError(f"{exc} (the folder's name): give dataset_name", params=("dataset_name",)) from None
    if strategy == "trigger":
        _check_trigger_captions(ds)
    replaces = registry.issued_copy_id(name, licensee)
    if replaces is not None and not reissue:
        raise TracemarkError(f"licensee '{licensee}' already holds a copy of dataset '{name}'; reissue (`tracemark "
                             f"reissue {licensee}`) issues a new copy with a new key and revokes that one")
    if replaces is None and reissue:
        raise TracemarkError(f"licensee '{licensee}' holds no issued copy of dataset '{name}' to reissue")
    generation = registry.next_generation(name, licensee)
    key = registry.key_for(name, licensee, generation)  # checks the master key against the registry first
    pending = registry.pending_copy(name, licensee)
    if pending is not None:  # an earlier run died before its rename: start it over
        # (a complete folder was issued when the registry opened: Registry.recover_pending; a folder
        # still there is not ours unless empty, and _check_paths refuses it)
        if pending["out_path"] and Path(pending["out_path"]).is_dir() and not any(Path(pending["out_path"]).iterdir()):
            Path(pending["out_path"]).rmdir()
        registry.drop_pending(pending["id"])
    _remove_stale_temps(out_dir)
    _check_paths(data_dir, out_dir)

    skipped: list[str] = _unlisted_report(ds)
    checks = FileChecks(registry, ds.samples)
    valid = usable_samples(ds, data_dir, max_pixels, on_error, skipped, checks)
    marked_ids = set(select_samples(key, [s.file_name for s in valid], [s.text for s in valid],
                                    selection_rate(len(valid), rate, min_marked), selection,
                                    thumbnails=lambda: image_thumbnails([s.path for s in valid], checks=checks),
                                    selection_version=SELECTION_VERSION if selection == "visual" else None))
    if trigger_scope not in TRIGGER_SCOPES:
        raise TracemarkError(f"trigger_scope must be one of {', '.join(TRIGGER_SCOPES)}, got {trigger_scope!r}",
                             params=("trigger_scope",))
    trig_key = key if trigger_scope == "licensee" else registry.key_for(name, DATASET_TRIGGER_ID)
    avoid = vocabulary(s.text for s in ds.samples)
    if strategy == "trigger" and trigger_scope == "licensee":
        # unique per dataset: two licensees with one word could not be told apart by a trigger audit
        from tracemark.marking.trigger import trigger_of

        known = {r["name"] for r in registry.datasets()}
        avoid |= {w for c in (registry.copies(name, with_marked=False) if name in known else [])
                  if c.strategy == "trigger"
                  and c.params.get("trigger_scope", "licensee") == "licensee" and (w := trigger_of(c, registry))}
    trig, trig_attempt = (trigger_word(trig_key, avoid) if strategy == "trigger" else (None, None))

    tmp = temp_sibling(out_dir)
    created = _make_parents(out_dir.parent)
    copy_id = None
    renamed = False
    try:
        tmp.mkdir()
        params = {k: v for k, v in sch.params().items() if k != "scheme"}
        written = write_copy(ds, valid, marked_ids, tmp, scheme_name=sch.name, scheme_params=params, secret=key.secret,
                             trigger=trig, on_error=on_error, skipped=skipped, max_pixels=max_pixels, workers=workers,
                             engine=engine, address=address, progress=progress, checks=checks, link=link,
                             jpeg_writer=JPEG_WRITER)
        marked_records, skipped_files = written.marked, written.failed_marked
        psnrs = np.array([m["psnr"] for m in marked_records])
        ssims = np.array([m["ssim"] for m in marked_records if m["ssim"] is not None] or [np.nan])
        sha: dict[str, str] = {}
        chash = content_hash(ds, sha, checks)
        checks.save()
        with registry.write() as c:
            ds_id = registry.ensure_dataset(c, name, chash, len(ds), str(data_dir.resolve()))
            lic_id = registry.ensure_licensee(c, licensee)
            copy_id = registry.add_copy(
                c, dataset_id=ds_id, licensee_id=lic_id, key_id=key.key_id, scheme=sch.name, strategy=strategy,
                rate=rate, params={**sch.params(), **({"trigger_attempt": trig_attempt, "trigger_scope": trigger_scope}
                                            if trig else {}), **({"selection": selection} if selection != "random"
                                                                 else {}),
                        **({"min_marked": int(min_marked)} if min_marked else {}),
                        **({"selection_version": SELECTION_VERSION} if selection == "visual" else {}),
                        "jpeg_writer": JPEG_WRITER, "caption_column": ds.caption_column, "image_column": ds.image_column},
                marked=[{"file_name": m["file_name"], "dhash": m["dhash"], "text": m["text"],
                         "sha256": sha.get(m["file_name"])} for m in marked_records],
                out_path=str(out_dir.resolve()), status="pending", generation=generation,
            )
        rename_into_place(tmp, out_dir)
        renamed = True
        if reissue:
            registry.finalize_copy(copy_id, replaces=replaces)
        else:
            registry.finalize_copy(copy_id)
    except BaseException:
        if copy_id is not None:  # roll back what this run did; the next run starts clean either way
            try:
                if renamed:
                    shutil.rmtree(out_dir, ignore_errors=True)
                registry.drop_pending(copy_id)
            except Exception:  # the registry may be what failed: the next run drops the pending row
                pass
        remove_empty(created, tmp)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ProtectResult(out_dir, name, licensee, copy_id, sch.name, strategy, rate, len(valid) - len(skipped_files),
                         len(marked_records), float(psnrs.mean()), float(psnrs.min()), float(ssims.mean()), skipped,
                         forecast(len(marked_records)), ds.caption_column, ds.image_column, ds.columns_note(),
                         written.placed)


def reissue(registry: Registry, licensee: str, out_dir: str | Path, *, dataset: str | None = None,
            data_dir: str | Path | None = None, **kwargs) -> ProtectResult:
    """Issue ``licensee`` a new copy of a dataset they hold, with a new key (the next generation)
    and the same options as their current copy, which is revoked when the new one is issued (one
    transaction). The revoked copy stays in the registry and is still traced."""
    from tracemark.registry.database import find_copy
    from tracemark.marking.schemes import scheme_params

    copy = find_copy(registry, licensee, dataset)
    if data_dir is None:
        row = registry.conn.execute("SELECT source_path FROM datasets WHERE name = ?", (copy.dataset,)).fetchone()
        data_dir = row[0] if row else None
        if not data_dir or not Path(data_dir).is_dir():
            raise TracemarkError(f"{data_dir or copy.dataset}: the original data of '{copy.dataset}' is not where it "
                                 "was when the copy was issued; give data_dir", params=("data_dir",))
    p = copy.params
    sp = {k: v for k, v in scheme_params(copy).items() if k != "strength"}
    return protect(data_dir, out_dir, licensee, registry=registry, dataset_name=copy.dataset, scheme=copy.scheme,
                   strategy=copy.strategy, trigger_scope=p.get("trigger_scope", "licensee"), rate=copy.rate,
                   selection=p.get("selection", "random"), strength=p.get("strength"), scheme_params=sp,
                   min_marked=int(p.get("min_marked", 0)), caption_column=p.get("caption_column"),
                   image_column=p.get("image_column"), reissue=True, **kwargs)
