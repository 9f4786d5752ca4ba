"""Re-derive an issued copy from its registry row, the original dataset and the master key.

A copy need not be stored: the registry records which samples it marked (``Copy.marked``), with
which scheme parameters and trigger word index, and the master key re-derives the licensee key.
:func:`materialize` runs the same writing stage as ``protect`` (:func:`tracemark.marking.protect.write_copy`)
on the original data, so the folder it writes is the issued copy bit for bit; it refuses data whose
content hash differs from the one registered at issue time. ``fmt="webdataset"`` packs the same
files into deterministic ``.tar`` shards for streaming training loaders.

The registry and the input are only read; the output is assembled in a temporary sibling folder
and renamed into place when complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.io.dataset import MAX_PIXELS, Dataset, FileChecks, content_hash, load_dataset
from tracemark.marking.engine import check_engine
from tracemark.marking.protect import (_check_paths, _make_parents, _remove_stale_temps, remove_empty,
                                       rename_into_place, selection_rate, temp_sibling, check_link, usable_samples,
                                       write_copy)
from tracemark.marking.schemes import get_scheme, scheme_params
from tracemark.marking.selection import image_thumbnails, select_samples
from tracemark.marking.shards import FORMATS, SHARD_SIZE, write_shards
from tracemark.marking.trigger import trigger_of
from tracemark.registry.database import Copy, Registry, find_copy


@dataclass
class MaterializeResult:
    out_dir: Path
    dataset: str
    licensee: str
    copy_id: int
    fmt: str
    n_samples: int
    n_marked: int
    shards: list[Path] = field(default_factory=list)
    #: Files the issued copy left out too (unusable images skipped with ``--on-error skip``).
    skipped: list[str] = field(default_factory=list)


def _source(registry: Registry, copy: Copy, data_dir: str | Path | None) -> tuple[Path, str]:
    """The original dataset's folder (``data_dir``, else the one recorded at issue time) and the
    content hash the registry recorded for it."""
    row = next((r for r in registry.datasets() if r["name"] == copy.dataset), None)
    if row is None:  # pragma: no cover - copies() joins on datasets
        raise TracemarkError(f"dataset '{copy.dataset}' is not in the registry ({registry.db_path})")
    if data_dir is None:
        if not row["source_path"]:
            raise TracemarkError(f"dataset '{copy.dataset}' has no recorded source folder; pass data_dir, the original",
                                 params=("data_dir",))
        data_dir = Path(row["source_path"])
        if not data_dir.is_dir():
            raise TracemarkError(f"{data_dir}: the recorded source folder of dataset '{copy.dataset}' is gone; "
                                 "pass data_dir, the original", params=("data_dir",))
    return Path(data_dir), row["content_hash"]


def copy_columns(copy: Copy) -> tuple[str, str]:
    """(caption column, image column) the copy was made from, as recorded when it was issued (copies
    issued before columns were recorded read ``text`` and ``file_name``, the only ones then)."""
    return str(copy.params.get("caption_column", "text")), str(copy.params.get("image_column", "file_name"))


def _load_original(data_dir: Path, registered_hash: str, name: str, columns: tuple[str, str] = ("text", "file_name"),
                   registry: Registry | None = None) -> tuple[Dataset, FileChecks]:
    """The dataset at ``data_dir`` read with the copy's ``columns`` (caption, image), refused unless
    its content hash is the registered one: other files or captions would give another copy. Also
    the dataset pass (:class:`FileChecks`) whose digests the hash reuses for unchanged files."""
    ds = load_dataset(data_dir, *columns)
    checks = FileChecks(registry, ds.samples)
    got = content_hash(ds, checks=checks)
    if got != registered_hash:
        raise TracemarkError(f"{data_dir}: not the data of dataset '{name}' as registered (content hash "
                             f"{got[:12]} != {registered_hash[:12]}: files or captions changed); pass the original")
    return ds, checks


def materialize(
    registry: Registry,
    copy: Copy | str,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    fmt: str = "folder",
    shard_size: int = SHARD_SIZE,
    workers: int | None = None,
    engine: str = "local",
    address: str | None = None,
    max_pixels: int = MAX_PIXELS,
    progress: Callable[[int, int], None] | None = None,
    link: str = "copy",
) -> MaterializeResult:
    """Write the issued copy ``copy`` (a :class:`Copy`, or a licensee name) to ``out_dir``, as an
    imagefolder (``fmt="folder"``, identical to what ``protect`` wrote) or as WebDataset shards.
    Files the dataset pass decoded before and that are unchanged are copied without decoding them
    (``link``: how, :data:`tracemark.marking.protect.LINK_MODES`)."""
    check_link(link)
    if fmt not in FORMATS:
        raise TracemarkError(f"fmt must be one of {', '.join(FORMATS)}, got '{fmt}'", params=("fmt",))
    if fmt == "webdataset" and (not isinstance(shard_size, int) or shard_size < 1):
        raise TracemarkError(f"shard_size must be a positive number of samples, got {shard_size}",
                             params=("shard_size",))
    check_engine(engine)
    if isinstance(copy, str):
        copy = find_copy(registry, copy, dataset)
    out_dir = Path(out_dir)
    key = registry.key_for_copy(copy)  # a wrong master key fails here, before any data is read
    trig = trigger_of(copy, registry)
    sch = get_scheme(copy.scheme, **scheme_params(copy))
    data_dir, registered_hash = _source(registry, copy, data_dir)
    _remove_stale_temps(out_dir)
    _check_paths(data_dir, out_dir)  # before hashing every file of the data
    ds, checks = _load_original(data_dir, registered_hash, copy.dataset, copy_columns(copy), registry)

    # the same usable samples as at issue time (same data, same checks); a file the issued copy
    # skipped is skipped again, and a file the key selected whose marking failed then stays out
    skipped: list[str] = []
    valid = usable_samples(ds, data_dir, max_pixels, "skip", skipped, checks)
    recorded = {m["file_name"] for m in copy.marked}
    names = {s.file_name for s in valid}
    if missing := sorted(recorded - names):
        raise TracemarkError(f"{data_dir / missing[0]}: copy {copy.id} marked this file but it is unusable now "
                             f"({len(missing)} such file(s))")
    rate = selection_rate(len(valid), copy.rate, int(copy.params.get("min_marked", 0)))
    failed_at_issue = set(select_samples(key, [s.file_name for s in valid], [s.text for s in valid], rate,
                                         copy.params.get("selection", "random"),
                                         selection_version=copy.params.get("selection_version"),
                                         thumbnails=lambda: image_thumbnails([s.path for s in valid],
                                                                                checks=checks))) - recorded
    skipped += [f"{s.path}: selected for marking, but marking it failed when the copy was issued"
                for s in valid if s.file_name in failed_at_issue]
    valid = [s for s in valid if s.file_name not in failed_at_issue]

    tmp = temp_sibling(out_dir)
    created = _make_parents(out_dir.parent)
    try:
        tmp.mkdir()
        files = tmp / "copy" if fmt == "webdataset" else tmp
        files.mkdir(exist_ok=True)
        params = {k: v for k, v in sch.params().items() if k != "scheme"}
        written = write_copy(ds, valid, recorded, files, scheme_name=sch.name, scheme_params=params, secret=key.secret,
                             trigger=trig, on_error="skip", skipped=skipped, max_pixels=max_pixels, workers=workers,
                             engine=engine, address=address, progress=progress, ssim_sample=0, checks=checks,
                             link=link, measure=False, jpeg_writer=int(copy.params.get("jpeg_writer", 1)))
        checks.save()
        if written.failed_marked:
            raise TracemarkError(next((line for line in skipped if any(f in line for f in written.failed_marked)),
                                      f"{data_dir}: {len(written.failed_marked)} marked file(s) could not be marked"))
        kept = [s for s in valid if (files / s.file_name).is_file()]
        shards: list[Path] = []
        if fmt == "webdataset":
            shard_dir = tmp / "shards"
            shard_dir.mkdir()
            shards = write_shards(files, shard_dir, shard_size, ds.caption_column, ds.image_column)
            final = shard_dir
        else:
            final = tmp
        rename_into_place(final, out_dir)
    except BaseException:
        remove_empty(created, tmp)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return MaterializeResult(out_dir, copy.dataset, copy.licensee, copy.id, fmt, len(kept), len(written.marked),
                             [out_dir / p.name for p in shards], skipped)

