"""Reading and writing image-caption datasets in the Hugging Face *imagefolder* layout.

This is the layout the diffusers text-to-image training scripts load with
``load_dataset("imagefolder", data_dir=...)``: image files plus a ``metadata.jsonl`` (or
``metadata.csv``) whose rows name a ``file_name`` relative to the metadata file's folder and a
caption column. Subfolders may hold their own metadata files. The columns are those of diffusers'
``--image_column`` / ``--caption_column``: given, or found when the metadata has exactly one of the
usual names (:data:`CAPTION_COLUMNS`, :data:`IMAGE_COLUMNS`); a copy keeps the source's names.
Hugging Face datasets saved with ``save_to_disk`` or as parquet are imported into this layout once
(:mod:`tracemark.io.huggingface`).

Everything a user can get wrong here raises :class:`TracemarkError` with the file and the
problem in one line: the CLI shows that line, never a traceback.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from tracemark.errors import TracemarkError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
#: Default pixel limit; larger images are refused (decompression-bomb guard).
MAX_PIXELS = 40_000_000
#: Pixel modes that can carry an invisible mark and be written back in the same mode.
SUPPORTED_MODES = {"RGB", "RGBA", "L"}
#: Caption column names found without ``--caption-column`` (the metadata must hold exactly one).
CAPTION_COLUMNS = ("text", "caption", "prompt", "description")
#: The imagefolder convention for the image column; without ``--image-column`` it is used when
#: present, else the one of :data:`IMAGE_COLUMNS` the metadata holds.
DEFAULT_IMAGE_COLUMN = "file_name"
IMAGE_COLUMNS = ("file_name", "image", "path", "file", "filename", "image_path")


@dataclass
class Sample:
    """One image-caption pair. ``file_name`` is relative to the dataset root (posix)."""

    file_name: str
    text: str
    path: Path
    metadata_file: Path
    extra: dict = field(default_factory=dict)
    line: int = 0  #: the row's line in ``metadata_file`` (for one-line errors about its caption)


@dataclass
class Dataset:
    root: Path
    samples: list[Sample]
    metadata_files: list[Path]
    caption_column: str = "text"
    image_column: str = DEFAULT_IMAGE_COLUMN
    #: the columns found in the metadata rather than given: {"caption"|"image": column}
    detected: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def columns_note(self) -> str | None:
        """One line naming the columns found rather than given, when they are not the imagefolder
        conventions (``file_name``, ``text``): the user sees which column became the captions."""
        parts = []
        if self.detected.get("image", DEFAULT_IMAGE_COLUMN) != DEFAULT_IMAGE_COLUMN:
            parts.append(f"images from column '{self.image_column}' (--image-column to choose another)")
        if self.detected.get("caption", "text") != "text":
            parts.append(f"captions from column '{self.caption_column}' (--caption-column to choose another)")
        return "; ".join(parts) or None


def check_column(value: str | None, option: str) -> str | None:
    """A column name as given (None: find it); an empty or blank name is a mistake, not a default."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise TracemarkError(f"{option} must name a column, got {value!r}", params=(option,))
    return value


def pick_column(columns: list[str], given: str | None, candidates: tuple[str, ...], option: str, what: str,
                where: object, prefer: str | None = None) -> tuple[str, bool]:
    """(column, found rather than given): ``given`` as is, else ``prefer`` when present, else the one
    of ``candidates`` present in ``columns``; none or several is a one-line error naming ``where``,
    the columns and ``option``."""
    if given is not None:
        return given, False
    if prefer is not None and prefer in columns:
        return prefer, True
    found = [c for c in candidates if c in columns]
    if len(found) == 1:
        return found[0], True
    shown = ", ".join(repr(c) for c in columns) or "none"
    if not found:
        raise TracemarkError(f"{where}: no {what} column (none of {', '.join(candidates)}; columns: {shown}); "
                             f"pass {option}", params=(option,))
    raise TracemarkError(f"{where}: several possible {what} columns ({', '.join(repr(c) for c in found)}); "
                         f"pass {option}", params=(option,))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_rows(meta: Path) -> list[tuple[int, dict]]:
    """(line number, row) of one metadata file; each row's problems name the file and line."""
    try:
        raw = meta.read_bytes()
    except OSError as exc:
        raise TracemarkError(f"{meta}: cannot read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TracemarkError(f"{meta}:{line}: caption is not valid UTF-8") from exc
    rows: list[dict] = []
    if meta.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TracemarkError(f"{meta}:{lineno}: line is not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise TracemarkError(f"{meta}:{lineno}: line is not a JSON object")
            _check_unicode(row, meta, lineno)
            rows.append((lineno, row))
    else:
        reader = csv.DictReader(io.StringIO(text))
        for lineno, row in enumerate(reader, 2):
            if None in row:
                raise TracemarkError(f"{meta}:{lineno}: more fields than the header names")
            if any(v is None for v in row.values()):
                raise TracemarkError(f"{meta}:{lineno}: fewer fields than the header names")
            rows.append((lineno, row))
    return rows


def _check_unicode(row: dict, meta: Path, lineno: int) -> None:
    """Refuse a JSON escape of a lone UTF-16 surrogate (``"\\ud800"``): valid JSON, but no Unicode
    text; it would only fail when the copy's metadata is written, after the images were marked."""

    def bad(value) -> bool:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return True
            return False
        if isinstance(value, dict):
            return any(bad(k) or bad(v) for k, v in value.items())
        if isinstance(value, list):
            return any(bad(v) for v in value)
        return False

    for k, v in row.items():
        if bad(k) or bad(v):
            name = k.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise TracemarkError(f"{meta}:{lineno}: field '{name}' holds a lone surrogate escape (like \\ud800): "
                                 "not Unicode text")


def _resolve(path: Path, where: str) -> Path:
    """``path.resolve()`` with a symlink loop as a one-line error (Python raises RuntimeError or OSError)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise TracemarkError(f"{path}: symlink loop or unreadable link ({where})") from exc


def _resolve_sample(path: Path, parents: dict[str, Path], where: str) -> tuple[Path, bool]:
    """(``path.resolve()``, whether it is a regular file) with one ``lstat`` for a plain file: its
    folder is resolved once per folder (``parents``), and only a symlink, a missing file or an
    odd name (``..``) takes the full resolve. A dataset of 10^6 files resolves in seconds."""
    import stat

    name = path.name
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or stat.S_ISLNK(st.st_mode) or name in ("", ".", ".."):
        resolved = _resolve(path, where)
        return resolved, resolved.is_file()
    folder = str(path.parent)
    parent = parents.get(folder)
    if parent is None:
        parent = parents[folder] = _resolve(path.parent, where)
    return parent / name, stat.S_ISREG(st.st_mode)


def hf_kind(path: Path) -> str | None:
    """What kind of Hugging Face dataset ``path`` holds ("save_to_disk", "parquet"), or None."""
    path = Path(path)
    if path.is_file():
        return "parquet" if path.suffix == ".parquet" else None
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                  and (path / "dataset_info.json").is_file()):
        return "save_to_disk"
    if any(path.rglob("*.parquet")) and not any(path.rglob("metadata.jsonl")) and not any(path.rglob("metadata.csv")):
        return "parquet"
    return None


def load_dataset(root: str | Path, caption_column: str | None = None, image_column: str | None = None, *,
                 captions: bool = True) -> Dataset:
    """Load and validate an imagefolder dataset (metadata only; images are not decoded).

    Checks: the folder exists, metadata parses, every row names an image and has a string caption,
    file names are unique and stay inside the dataset, and every named file exists. The columns are
    ``image_column`` / ``caption_column`` when given, else found (:func:`pick_column`).
    ``captions=False`` (readers of the images only): a caption column that cannot be found is no
    error, and captions are read as ``""``.
    """
    check_column(caption_column, "caption_column")
    check_column(image_column, "image_column")
    root = Path(root)
    if not root.is_dir():
        if root.is_file() and root.suffix == ".parquet":
            raise TracemarkError(f"{root}: a parquet file, not an imagefolder dataset: import it once with "
                                 f"import_hf (`tracemark import-hf {root}`) and use the folder it writes")
        raise TracemarkError(f"{root}: dataset folder not found")
    metas = []
    for p in root.rglob("*"):  # symlinked folders are not followed: a link to a parent cannot loop here
        if p.name in METADATA_NAMES and not p.is_dir():
            if not p.is_file():  # a dangling link or a link loop: its rows would be dropped without a word
                raise TracemarkError(f"{p}: metadata file is a broken symlink or a symlink loop")
            metas.append(p)
    metas.sort()
    if not metas:
        kind = hf_kind(root)
        if kind is not None:
            raise TracemarkError(f"{root}: a Hugging Face dataset ({kind}), not an imagefolder: import it once with "
                                 f"import_hf (`tracemark import-hf {root}`) and use the folder it writes")
        raise TracemarkError(f"{root}: no metadata.jsonl or metadata.csv (imagefolder layout expected)")
    kinds = {m.suffix for m in metas}
    if len(kinds) > 1:  # Hugging Face imagefolder refuses mixed metadata too
        raise TracemarkError(f"{root}: both metadata.jsonl and metadata.csv files ({', '.join(_rel(m, root) for m in metas)}); "
                             "use one format")
    root_resolved = _resolve(root, "the dataset folder")
    table = [(meta, read_rows(meta)) for meta in metas]
    if not any(rows for _, rows in table):
        raise TracemarkError(f"{root}: dataset is empty (no rows in {', '.join(m.name for m in metas)})")
    columns = list(dict.fromkeys(k for _, rows in table for _, row in rows for k in row))  # first seen first
    where = metas[0] if len(metas) == 1 else root
    image_col, image_found = pick_column(columns, image_column, IMAGE_COLUMNS, "image_column", "image", where,
                                         prefer=DEFAULT_IMAGE_COLUMN)
    try:
        caption_col, caption_found = pick_column(columns, caption_column, tuple(c for c in CAPTION_COLUMNS
                                                                                if c != image_col),
                                                 "caption_column", "caption", where)
    except TracemarkError:
        if captions:
            raise
        caption_col, caption_found = "", False
    if caption_col == image_col:
        raise TracemarkError(f"{where}: column '{image_col}' cannot be both the image and the caption column")
    detected = {k: v for k, v, found in (("image", image_col, image_found), ("caption", caption_col, caption_found))
                if found}
    samples: list[Sample] = []
    seen: dict[str, Path] = {}
    parents: dict[str, Path] = {}
    root_norm = os.path.normpath(root)
    root_prefix = root_norm.rstrip(os.sep) + os.sep
    for meta, rows in table:
        for lineno, row in rows:
            name = row.get(image_col)
            if not isinstance(name, str) or not name:
                raise TracemarkError(f"{meta}:{lineno}: missing '{image_col}'"
                                     + ("" if image_col in row or image_column is None else
                                        f" (columns: {', '.join(repr(c) for c in row)}; image_column)"),
                                     params=("image_column",))
            caption = row.get(caption_col) if caption_col else ""
            if not isinstance(caption, str):
                if captions:
                    raise TracemarkError(f"{meta}:{lineno}: missing or non-string caption column '{caption_col}'"
                                         + ("" if caption_col in row else
                                            f" (columns: {', '.join(repr(c) for c in row)}; caption_column)"),
                                         params=("caption_column",))
                caption = ""
            path = (meta.parent / name)
            try:
                resolved, is_file = _resolve_sample(path, parents, f"named in {meta.name} line {lineno}")
                resolved.relative_to(root_resolved)
                # the name as written (a symlink keeps its own name: the copy holds a file under it)
                normed = os.path.normpath(path)
                if root_norm != "." and not normed.startswith(root_prefix):
                    raise ValueError(normed)
                rel = Path(normed if root_norm == "." else normed[len(root_prefix):]).as_posix()
            except ValueError as exc:
                raise TracemarkError(f"{meta}:{lineno}: {image_col} '{name}' points outside the dataset") from exc
            if rel in seen:
                raise TracemarkError(f"{meta}:{lineno}: duplicate {image_col} '{name}' (also in {seen[rel]})")
            seen[rel] = meta
            if not is_file:
                raise TracemarkError(f"{path}: file named in {meta.name} line {lineno} is missing")
            extra = {k: v for k, v in row.items() if k not in (image_col, caption_col)}
            samples.append(Sample(rel, caption, path, meta, extra, lineno))
    return Dataset(root, samples, metas, caption_col, image_col, detected)


def unlisted_files(ds: Dataset) -> tuple[list[Path], list[Path], list[Path]]:
    """What a copy of ``ds`` leaves out: (images no metadata row names, other files that are neither
    images nor metadata, hidden entries). Hugging Face imagefolder trains on the rows only and
    ignores hidden files, so the copy does too; these lists let the caller say so. Symlinked folders
    are not walked (no loops)."""
    listed = {os.path.normpath(s.path) for s in ds.samples} | {os.path.normpath(m) for m in ds.metadata_files}
    images: list[Path] = []
    other: list[Path] = []
    hidden: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(ds.root):
        hidden += [Path(dirpath, d) for d in dirnames if d.startswith(".")]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            p = os.path.normpath(os.path.join(dirpath, f))
            if p in listed:
                continue
            if f.startswith("."):
                hidden.append(Path(p))
            else:
                (images if Path(f).suffix.lower() in IMAGE_EXTENSIONS else other).append(Path(p))
    return images, other, hidden


def load_samples(root: str | Path, caption_column: str | None = None, image_column: str | None = None) -> list[Sample]:
    """Convenience: the samples of :func:`load_dataset`."""
    return load_dataset(root, caption_column, image_column).samples


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root`` (sorted), for black-box audits and leaked files."""
    root = Path(root)
    if not root.is_dir():
        raise TracemarkError(f"{root}: folder not found")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise TracemarkError(f"{root}: no image files found")
    return files


def check_image_header(path: Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image lazily and refuse what cannot be marked faithfully (no pixel decode)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if isinstance(exc, UnidentifiedImageError):
            raise TracemarkError(f"{path}: not a readable image") from exc
        raise TracemarkError(f"{path}: image is too large (decompression-bomb guard)") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # fuzzed headers, oversized text chunks, ...
        raise TracemarkError(f"{path}: cannot open image ({exc})") from exc
    w, h = im.size
    if getattr(im, "n_frames", 1) > 1:
        raise TracemarkError(f"{path}: {im.n_frames} frames (animated or multi-page); every frame but the first "
                             "would be lost: give one frame per file")
    if w * h > max_pixels:
        raise TracemarkError(f"{path}: {w}x{h} exceeds the pixel limit of {max_pixels:,} (decompression-bomb guard)")
    if w < 8 or h < 8:
        raise TracemarkError(f"{path}: {w}x{h} is too small to mark (min 8x8)")
    if im.mode == "P" and ("transparency" in im.info):
        raise TracemarkError(f"{path}: palette image with transparency is not supported; convert it to RGBA")
    if im.mode not in SUPPORTED_MODES and im.mode != "P":
        hint = {
            "CMYK": "convert it to RGB",
            "LA": "convert it to RGBA",
            "I;16": "16-bit images are not supported; convert to 8-bit",
            "I;16B": "16-bit images are not supported; convert to 8-bit",
            "I": "32-bit integer images are not supported; convert to 8-bit",
        }.get(im.mode, "convert it to RGB")
        raise TracemarkError(f"{path}: image mode {im.mode} is not supported; {hint}")
    if im.mode == "P":
        raise TracemarkError(f"{path}: palette (P) images cannot carry an invisible mark; convert to RGB")
    # Pillow opens 16-bit RGB / RGBA / grey+alpha and 1-4-bit grey as 8-bit modes: the marked file
    # would silently change bit depth (and betray itself), so those depths are refused here
    tile = im.tile[0] if im.tile else None
    rawmode = tile[3] if tile is not None and len(tile) > 3 else None
    rawmode = rawmode[0] if isinstance(rawmode, tuple) and rawmode else rawmode
    if isinstance(rawmode, str) and ";" in rawmode:
        depth = "".join(ch for ch in rawmode.split(";", 1)[1] if ch.isdigit())
        if depth and depth != "8":
            raise TracemarkError(f"{path}: {depth}-bit {rawmode.split(';')[0]} image is not supported (it would be "
                                 f"written as 8-bit); convert it to 8 bits per channel")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: treat as unrotated, pixel data is what we mark
        orientation = 1
    if orientation not in (1, None):
        raise TracemarkError(
            f"{path}: EXIF orientation {orientation} (rotated photo); apply the rotation first "
            "(e.g. PIL.ImageOps.exif_transpose) so that marks align"
        )
    return im


def read_image(path: Path, max_pixels: int = MAX_PIXELS, dtype=np.float32) -> tuple[np.ndarray, Image.Image]:
    """Decode an image fully; return (HxWx3 array in 0..255 (float32 by default), the PIL image).

    Truncated or corrupt data is an error (Pillow's lenient LOAD_TRUNCATED_IMAGES is off).
    """
    im = check_image_header(path, max_pixels)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise TracemarkError(f"{path}: image data is corrupt or truncated ({exc})") from exc
    rgb = im if im.mode == "RGB" else im.convert("RGB")
    return np.asarray(rgb, dtype=dtype), im


def read_image_rgb(path: Path, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Decode any readable image to float32 RGB for scoring (lenient about modes). ``max_side``:
    reduce it (area average; JPEGs decoded at a reduced scale) so its longer side is at most that."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > max_pixels:
                    raise TracemarkError(f"{path}: exceeds the pixel limit of {max_pixels:,}")
                target = None
                if max_side is not None and max(im.size) > max_side:
                    scale = max_side / max(im.size)
                    target = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
                    im.draft("RGB", target)  # JPEG: DCT-domain downscale to >= target, no-op otherwise
                im.load()
                if im.mode in ("I;16", "I;16B", "I"):
                    arr = np.asarray(im, dtype=np.float32)
                    arr = arr / max(arr.max(), 1.0) * 255.0
                    if target is not None:
                        arr = np.asarray(Image.fromarray(arr, "F").resize(target, Image.Resampling.BOX))
                    return np.repeat(arr[..., None], 3, axis=2)
                rgb = im.convert("RGB")
                if target is not None and rgb.size != target:
                    rgb = rgb.resize(target, Image.Resampling.BOX)
                return np.asarray(rgb).astype(np.float32)
    except TracemarkError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise TracemarkError(f"{path}: not a readable image ({exc.__class__.__name__})") from exc


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_hash(dataset: Dataset, file_hashes: dict[str, str] | None = None,
                 checks: "FileChecks | None" = None) -> str:
    """SHA-256 over (file_name, file bytes hash, caption) of every sample, order-independent.
    ``file_hashes``, when given, is filled with each sample's own SHA-256 (the registry keeps those
    of the marked samples). With ``checks`` a file's digest is read from the dataset pass when the
    file is unchanged since (size, mtime, inode), and recorded there otherwise."""
    h = hashlib.sha256()
    for s in sorted(dataset.samples, key=lambda s: s.file_name):
        fh = checks.sha256(s.path) if checks is not None else None
        if fh is None:
            fh = file_sha256(s.path)
            if checks is not None:
                checks.update(s.path, sha256=fh)
        if file_hashes is not None:
            file_hashes[s.file_name] = fh
        h.update(s.file_name.encode() + b"\0" + fh.encode() + b"\0" + s.text.encode() + b"\n")
    return h.hexdigest()


#: Version of what :class:`FileChecks` records (a change of the checks invalidates older records).
FILE_CHECKS_VERSION = 1


class FileChecks:
    """The one-time pass over a dataset's files, kept in the registry (``file_checks``): per file,
    whether it decoded fully (and its pixel count, for the pixel limit), its SHA-256 and its
    thumbnail. A record counts only while the file has the size, mtime and inode it had when it was
    checked, so a file changed, replaced or truncated since is checked again (and a corrupt one
    refused). Without it every copy decoded every image of the dataset to catch a corrupt file. As
    for make or rsync, a file rewritten in place to the same size with its mtime set back is not
    noticed; the content hash (``materialize``) then reads the recorded digest too."""

    def __init__(self, registry, samples: list[Sample]) -> None:
        self.registry = registry
        self.stats: dict[str, tuple[int, int, int]] = {}
        for s in samples:
            try:
                st = os.stat(s.path)
            except OSError:
                continue  # reported by whatever reads it
            self.stats[self.key(s.path)] = (st.st_size, st.st_mtime_ns, st.st_ino)
        rows = registry.file_checks(list(self.stats)) if registry is not None else {}
        self.known: dict[str, dict] = {
            p: {"pixels": r[4], "sha256": r[5], "thumb": r[6]} for p, r in rows.items()
            if tuple(r[:3]) == self.stats.get(p) and r[3] == FILE_CHECKS_VERSION}
        self.changed: set[str] = set()

    @staticmethod
    def key(path: str | Path) -> str:
        return os.path.abspath(path)

    def _get(self, path: str | Path, field_name: str):
        rec = self.known.get(self.key(path))
        return None if rec is None else rec[field_name]

    def decoded(self, path: str | Path, max_pixels: int = MAX_PIXELS) -> bool:
        """Whether ``path`` decoded fully, unchanged since, within ``max_pixels``."""
        pixels = self._get(path, "pixels")
        return pixels is not None and pixels <= max_pixels

    def sha256(self, path: str | Path) -> str | None:
        return self._get(path, "sha256")

    def thumb(self, path: str | Path) -> bytes | None:
        return self._get(path, "thumb")

    def update(self, path: str | Path, **fields) -> None:
        """Record what was just learnt of ``path`` (against its size and mtime seen before reading it)."""
        k = self.key(path)
        if k not in self.stats:
            return
        rec = self.known.setdefault(k, {"pixels": None, "sha256": None, "thumb": None})
        rec.update(fields)
        self.changed.add(k)

    def save(self) -> None:
        """Write what this run learnt to the registry (one transaction)."""
        if self.registry is None or not self.changed:
            return
        self.registry.record_file_checks([
            (k, *self.stats[k], FILE_CHECKS_VERSION, self.known[k]["pixels"], self.known[k]["sha256"],
             self.known[k]["thumb"]) for k in sorted(self.changed)])
        self.changed.clear()


def write_metadata(meta_path: Path, rows: list[dict]) -> None:
    """Write rows as metadata.jsonl or metadata.csv (chosen by the file name)."""
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    if meta_path.suffix == ".jsonl":
        with open(meta_path, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        cols: list[str] = []
        for row in rows:
            cols += [c for c in row if c not in cols]
        with open(meta_path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=cols)
            writer.writeheader()
            writer.writerows(rows)


def is_inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or below it, after resolving symlinks (an output reached
    through a link into the input is inside the input)."""
    try:
        Path(os.path.realpath(child)).relative_to(os.path.realpath(parent))
        return True
    except ValueError:
        return False


#: Images of the owner's dataset used to estimate its content subspace (stats.content_basis).
CONTENT_SAMPLE = 2000
#: Longest side the content images are read at (JPEGs decoded at reduced size): the detectors' grids
#: are 32 (spread) to 256, and any key-independent basis keeps the null exact, so a smaller copy of
#: the content only costs resolution the statistic does not read.
CONTENT_SIDE = 256


class ContentImages(Sequence):
    """The content sample, decoded when read (one image in memory at a time) and at most
    :data:`CONTENT_SIDE` on a side: 2,000 originals of 4 MP held as float32 would take 96 GB."""

    def __init__(self, paths: list[Path], side: int = CONTENT_SIDE) -> None:
        self.paths, self.side = paths, side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ContentImages(self.paths[i], self.side)
        return read_image_rgb(self.paths[i], max_side=self.side)


def content_sample(data_dir: str | Path | None, n: int = CONTENT_SAMPLE, seed: int = 0,
                   image_column: str | None = None) -> ContentImages | None:
    """Up to ``n`` original images of the owner's dataset (a fixed sample, read lazily and reduced:
    :class:`ContentImages`), or None without data. Only the images are read: captions, or a
    caption column that cannot be told, do not matter."""
    if data_dir is None:
        return None
    samples = load_dataset(data_dir, image_column=image_column, captions=False).samples
    if len(samples) > n:
        idx = np.sort(np.random.default_rng(seed).choice(len(samples), size=n, replace=False))
        samples = [samples[i] for i in idx]
    return ContentImages([s.path for s in samples])
