"""Shared pieces of the experiments: cells, resumable CSVs, fine-tune -> generate -> score."""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracemark.detection import stats
from tracemark.io.dataset import list_images, read_image_rgb
from tracemark.registry.keys import Key
from tracemark.marking.schemes.base import Scheme


def done_cells(csv_path: Path, key_fields: list[str]) -> set[tuple]:
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as fh:
        return {tuple(row[k] for k in key_fields) for row in csv.DictReader(fh)}


def add_columns(csv_path: Path, defaults: dict) -> None:
    """Give an existing results CSV the columns of ``defaults`` it lacks (after its last column
    of the same order), filled with the default: rows written before a field existed meant it.
    Atomic (temp file + rename)."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
        header = list(rows[0]) if rows else []
    missing = [k for k in defaults if k not in header]
    if not missing or not rows:
        return
    order = list(defaults)
    new_header = list(header)
    for k in missing:  # insert after the nearest preceding known column
        before = [c for c in order[:order.index(k)] if c in new_header]
        new_header.insert(new_header.index(before[-1]) + 1 if before else 0, k)
    tmp = csv_path.with_suffix(csv_path.suffix + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=new_header)
        w.writeheader()
        for r in rows:
            w.writerow({**{k: defaults[k] for k in missing}, **r})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, csv_path)


def append_row(csv_path: Path, row: dict) -> None:
    """Append one result row (header on first write); flushed and fsynced so a crash loses nothing."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists()
    if not new:
        with open(csv_path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != list(row):
            raise ValueError(f"{csv_path}: its columns differ from this run's ({len(header)} vs {len(row)}); "
                             "write to a new file or move the old one away")
    with open(csv_path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


def read_folder(folder: Path) -> list[np.ndarray]:
    return [read_image_rgb(p) for p in list_images(folder)]


@dataclass
class Score:
    z: float
    p: float
    n: int


def score(scheme: Scheme, images, key: Key, n_decoys: int = 1000, reference=None, seed: int = 0) -> Score:
    """Decoy-calibrated aggregated test of ``key``; ``reference`` images (same prompts and seeds,
    without the trigger or from the base model) are subtracted feature-wise when given."""
    F = scheme.features(images)
    if reference is not None:
        F = F - scheme.features(reference)
    P = scheme.key_vectors([key])
    res = stats.test_keys(F, P, scheme.random_vectors(n_decoys, np.random.default_rng(seed)), scheme.kind)
    s = float(res.stat[0])
    if scheme.kind == "message":
        s = (s - P.shape[1] / 2) / np.sqrt(P.shape[1] / 4)
    return Score(s, float(res.p_value[0]), len(images))


class Timer:
    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return round(dt, 1)
