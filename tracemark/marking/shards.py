"""WebDataset shards: a written imagefolder copy packed into deterministic ``.tar`` shards for
streaming training loaders (``tracemark materialize --format webdataset``); byte-identical on rerun."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tracemark.io.dataset import load_dataset

#: What :func:`tracemark.marking.materialize.materialize` writes: a folder, or the folder's shards.
FORMATS = ("folder", "webdataset")
#: Samples per WebDataset shard by default.
SHARD_SIZE = 1000


def _member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header that depends on nothing but the name and size (byte-identical reruns)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shards(copy_dir: Path, shard_dir: Path, shard_size: int = SHARD_SIZE, caption_column: str = "text",
                 image_column: str = "file_name") -> list[Path]:
    """Pack a written imagefolder copy into WebDataset shards ``shard-000000.tar``, ...: per sample,
    in metadata order, ``<key>.<ext>`` (the image file's bytes), ``<key>.json`` (its metadata row,
    ``file_name`` relative to the dataset root) and ``<key>.txt`` (its caption as in the copy's
    metadata, trigger included). Keys are the sample's position, zero-padded: WebDataset splits a
    member name at its first dot, which many file names contain. The columns are the copy's own."""
    ds = load_dataset(copy_dir, caption_column, image_column)
    shards = []
    for start in range(0, len(ds.samples), shard_size):
        path = shard_dir / f"shard-{len(shards):06d}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for i, s in enumerate(ds.samples[start:start + shard_size], start):
                key = f"{i:09d}"
                row = {ds.image_column: s.file_name, ds.caption_column: s.text, **s.extra}
                members = {f"{key}.{Path(s.file_name).suffix.lower().lstrip('.') or 'img'}": s.path.read_bytes(),
                           f"{key}.json": (json.dumps(row, ensure_ascii=False) + "\n").encode(),
                           f"{key}.txt": s.text.encode()}
                for name in sorted(members):
                    tar.addfile(_member(name, len(members[name])), io.BytesIO(members[name]))
        shards.append(path)
    return shards
