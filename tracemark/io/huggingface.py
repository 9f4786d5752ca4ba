"""Hugging Face datasets on disk as input: a one-time import into an imagefolder.

``tracemark import-hf SRC --out FOLDER`` reads a dataset written by ``Dataset.save_to_disk`` (or
``DatasetDict.save_to_disk``) or a folder of parquet files (a Hub repository's layout, or
``Dataset.to_parquet``) through the ``datasets`` library, offline (``HF_DATASETS_OFFLINE=1``;
nothing is downloaded), and writes FOLDER in the imagefolder layout that diffusers' training
scripts load: each row's image bytes as they are stored (never re-encoded), named by the row's
index (``00000000.png``) or by ``--id-column``, and a ``metadata.jsonl`` with ``file_name``, the
caption column under its own name and the other plain columns.

Why an import and not a second input format: the registry identifies a marked sample by a file
name in the original, hashes the original file by file, and ``materialize``, the white-box audit,
``shadow`` and ``finetune`` all re-read the original by that name. FOLDER is that original: made
once, in a place the user chose (and backs up), identical on every re-import, and read by every
command as any other imagefolder. The product imports ``datasets`` only here.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tracemark.errors import TracemarkError
from tracemark.io.dataset import hf_kind

#: Image formats written under their usual extension (what :mod:`tracemark.io.dataset` reads).
FORMAT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
#: An ``--id-column`` value becomes a file name: plain characters only, no leading dot.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,150}$")


@dataclass
class ImportResult:
    out_dir: Path
    kind: str
    split: str | None
    n_rows: int
    image_column: str
    caption_column: str
    id_column: str | None
    #: columns left out of metadata.jsonl (not plain JSON values: other images, audio, bytes)
    dropped: list[str] = field(default_factory=list)
    #: the columns found rather than given (as :attr:`tracemark.io.dataset.Dataset.detected`)
    detected: dict[str, str] = field(default_factory=dict)


def _datasets():
    """The ``datasets`` library, offline and quiet (imported only on this path)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a product dependency
        raise TracemarkError("reading a Hugging Face dataset needs the 'datasets' package: pip install datasets") \
            from exc
    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)  # our one line says what failed
    return datasets


def _open(src: Path, kind: str, split: str | None, cache_dir: str):
    """The chosen split of ``src`` (a Dataset, or an IterableDataset for parquet: streamed, no cache
    copy of the data), and the split's name."""
    datasets = _datasets()
    try:
        if kind == "save_to_disk":
            loaded = datasets.load_from_disk(str(src))
        else:
            files = [src] if src.is_file() else None
            loaded = datasets.load_dataset("parquet", data_files=[str(f) for f in files] if files else None,
                                           data_dir=None if files else str(src), streaming=True, cache_dir=cache_dir)
    except TracemarkError:
        raise
    except Exception as exc:  # corrupt arrow / parquet, an unreadable state.json, ...
        raise TracemarkError(f"{src}: cannot read this Hugging Face dataset ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            got = f"no split '{split}'" if split is not None else "several splits"
            raise TracemarkError(f"{src}: {got} ({', '.join(splits)}); pass split", params=("split",))
        return loaded[split], split
    if split is not None:
        raise TracemarkError(f"{src}: a single dataset without splits; leave out split", params=("split",))
    return loaded, None


def _columns(ds, src: Path, image_column: str | None, caption_column: str | None,
             id_column: str | None) -> tuple[str, str, dict[str, str]]:
    from tracemark.io.dataset import CAPTION_COLUMNS, pick_column

    datasets = _datasets()
    features = ds.features
    if features is None:  # pragma: no cover - parquet written without a schema
        raise TracemarkError(f"{src}: the dataset declares no features (column types)")
    names = list(features)
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    for given, option in ((image_column, "image_column"), (caption_column, "caption_column"),
                          (id_column, "id_column")):
        if given is not None and given not in features:
            raise TracemarkError(f"{src}: no column '{given}' (columns: {', '.join(names)}); check {option}",
                                 params=(option,))
    if not images:
        raise TracemarkError(f"{src}: no column of type Image (columns: {', '.join(names)})")
    image_col, image_found = pick_column(images, image_column, tuple(images), "image_column", "image", src)
    if not isinstance(features[image_col], datasets.Image):
        raise TracemarkError(f"{src}: column '{image_col}' is not an Image column ({features[image_col]!r})")
    strings = [c for c, f in features.items()
               if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")]
    caption_col, caption_found = pick_column(strings, caption_column, CAPTION_COLUMNS, "caption_column", "caption",
                                             src)
    if caption_col not in strings:
        raise TracemarkError(f"{src}: column '{caption_col}' is not a text column ({features[caption_col]!r})")
    if "file_name" in names and image_col != "file_name":
        raise TracemarkError(f"{src}: a column named 'file_name' would clash with the imagefolder's file names; "
                             "rename it first (Dataset.rename_column)")
    detected = {k: v for k, v, found in (("image", image_col, image_found), ("caption", caption_col, caption_found))
                if found}
    return image_col, caption_col, detected


def _plain(value) -> bool:
    """Whether ``value`` is a plain JSON value (what a metadata.jsonl row can hold as it is)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _image_bytes(cell, src: Path, i: int, col: str) -> bytes:
    """The stored bytes of one Image cell (``{"bytes", "path"}``), or the file it points to."""
    if not isinstance(cell, dict):
        raise TracemarkError(f"{src}: row {i}: no image in column '{col}'")
    if cell.get("bytes"):
        return cell["bytes"]
    path = cell.get("path")
    if path:
        p = Path(path) if Path(path).is_absolute() else (src if src.is_dir() else src.parent) / path
        try:
            return p.read_bytes()
        except OSError as exc:
            raise TracemarkError(f"{src}: row {i}: image not stored in the dataset and its file {p} cannot be "
                                 f"read ({exc.strerror or exc})") from None
    raise TracemarkError(f"{src}: row {i}: no image in column '{col}'")


def _ext(data: bytes, src: Path, i: int) -> str:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise TracemarkError(f"{src}: row {i}: the image bytes are not a readable image ({exc.__class__.__name__})") \
            from None
    if fmt not in FORMAT_EXT:
        raise TracemarkError(f"{src}: row {i}: {fmt} images are not supported (PNG, JPEG, WebP, BMP, TIFF)")
    return FORMAT_EXT[fmt]


def _file_stem(row: dict, i: int, id_column: str | None, src: Path) -> str:
    if id_column is None:
        return f"{i:08d}"
    value = row.get(id_column)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TracemarkError(f"{src}: row {i}: id_column '{id_column}' holds {value!r}, not a name or a number",
                             params=("id_column",))
    stem = str(value)
    if Path(stem).suffix.lower() in FORMAT_EXT.values() or Path(stem).suffix.lower() == ".jpeg":
        stem = stem[: -len(Path(stem).suffix)]
    if not _SAFE_ID.match(stem):
        raise TracemarkError(f"{src}: row {i}: id_column value {value!r} cannot be a file name (letters, digits, "
                             "'.', '_', '-' only, no leading dot)", params=("id_column",))
    return stem


def import_hf(src: str | Path, out: str | Path, *, split: str | None = None, caption_column: str | None = None,
              image_column: str | None = None, id_column: str | None = None,
              progress: Callable[[int, int | None], None] | None = None) -> ImportResult:
    """Write the Hugging Face dataset at ``src`` (``save_to_disk`` folder, parquet folder or file)
    as a new imagefolder ``out``; the same ``src`` always gives the same folder, byte for byte.
    ``progress(done, total)`` is called per row (total None when a parquet stream's length is unknown)."""
    from tracemark.io.dataset import check_column, is_inside
    from tracemark.io.safe_write import atomic_dir

    for value, option in ((caption_column, "caption_column"), (image_column, "image_column"),
                          (id_column, "id_column"), (split, "split")):
        check_column(value, option)
    src, out = Path(src), Path(out)
    if not src.exists():
        raise TracemarkError(f"{src}: not found")
    kind = hf_kind(src)
    if kind is None:
        raise TracemarkError(f"{src}: not a Hugging Face dataset on disk (no state.json / dataset_dict.json of "
                             "save_to_disk, no .parquet files)")
    if os.path.lexists(out):
        raise TracemarkError(f"{out}: already exists; the imported dataset goes to a new folder")
    if is_inside(out, src if src.is_dir() else src.parent) and src.is_dir():
        raise TracemarkError(f"{out}: lies inside the Hugging Face dataset {src}")
    with tempfile.TemporaryDirectory(prefix="tracemark-hf-cache-") as cache:
        ds, split = _open(src, kind, split, cache)
        image_col, caption_col, detected = _columns(ds, src, image_column, caption_column, id_column)
        ds = ds.cast_column(image_col, _datasets().Image(decode=False))
        total = len(ds) if hasattr(ds, "__len__") else None  # a parquet stream's length is unknown
        dropped: set[str] = set()
        seen: dict[str, int] = {}
        n = 0
        with atomic_dir(out) as tmp, open(tmp / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for i, row in enumerate(_rows(ds, src)):
                data = _image_bytes(row[image_col], src, i, image_col)
                name = _file_stem(row, i, id_column, src) + _ext(data, src, i)
                if name.lower() in seen:
                    raise TracemarkError(f"{src}: rows {seen[name.lower()]} and {i} would both be {name}: "
                                         f"id_column '{id_column}' is not unique", params=("id_column",))
                seen[name.lower()] = i
                caption = row[caption_col]
                if not isinstance(caption, str):
                    raise TracemarkError(f"{src}: row {i}: caption column '{caption_col}' is empty ({caption!r})")
                (tmp / name).write_bytes(data)
                record = {"file_name": name, caption_col: caption}
                for k, v in row.items():
                    if k in (image_col, caption_col):
                        continue
                    if _plain(v):
                        record[k] = v
                    else:
                        dropped.add(k)
                meta.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
                if progress is not None:
                    progress(n, total)
            if n == 0:
                raise TracemarkError(f"{src}: the dataset has no rows")
    return ImportResult(out, kind, split, n, image_col, caption_col, id_column, sorted(dropped), detected)


def _rows(ds, src: Path) -> Iterator[dict]:
    """The rows in their stored order, read in batches (a Dataset) or streamed (parquet); a file that
    breaks off midway is a one-line error naming ``src``."""
    try:
        if hasattr(ds, "__len__"):
            for batch in ds.iter(batch_size=256):
                keys = list(batch)
                for j in range(len(batch[keys[0]]) if keys else 0):
                    yield {k: batch[k][j] for k in keys}
        else:
            yield from ds
    except (TracemarkError, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:  # a truncated arrow or parquet file, a bad row group, ...
        raise TracemarkError(f"{src}: cannot read this Hugging Face dataset ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
