"""Measurements behind the CPU world's design choices (numbers in docs/sim.md).

(How well marks survive the world's VAE, and how good a base is: :mod:`tracemark_sim.quality`.)

``python -m tracemark_sim.experiments trigger --method lora --lora-targets broad``: a quick
version of issue #3's experiment, used to choose fine-tuning defaults: mark 10% of a 1000-image
faces dataset with a faint band-limited pattern plus a trigger word, fine-tune the base, generate
with and without the trigger, and score the mean normalized correlation of high-passed
generations with the pattern against 500 decoy patterns (z-score). Not the project's detector:
a yardstick for this world only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

TRIGGER = "tavoreki"


def band_pattern(seed: int, size: int = 32, low: float = 4.0, high: float = 12.0, rms: float = 3.0) -> np.ndarray:
    """A keyed random pattern (size x size x 3, in 0-255 units) with spatial frequencies between
    ``low`` and ``high`` cycles per image, scaled to ``rms``."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((3, size, size))
    f = np.fft.fftfreq(size) * size
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    mask = (radius >= low) & (radius <= high)
    pat = np.real(np.fft.ifft2(np.fft.fft2(noise) * mask)).transpose(1, 2, 0)
    return pat / pat.std() * rms


def highpass(images: np.ndarray) -> np.ndarray:
    """Image minus its 3x3 box blur (per channel), float. images: N x H x W x 3."""
    x = images.astype(np.float64)
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(pad[:, i : i + x.shape[1], j : j + x.shape[2]] for i in range(3) for j in range(3)) / 9.0
    return x - blur


def mean_correlation(images: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Mean over images of the normalized correlation of each high-passed image with each pattern.
    images: N x H x W x 3; patterns: K x H x W x 3 -> K."""
    hp = highpass(images).reshape(len(images), -1)
    hp /= np.linalg.norm(hp, axis=1, keepdims=True) + 1e-12
    pp = highpass(patterns).reshape(len(patterns), -1)
    pp /= np.linalg.norm(pp, axis=1, keepdims=True) + 1e-12
    return (hp @ pp.T).mean(axis=0)


def _load_folder(folder: Path) -> tuple[np.ndarray, list[dict]]:
    from PIL import Image

    rows = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines() if x.strip()]
    imgs = np.stack([np.asarray(Image.open(folder / r["file_name"]).convert("RGB")) for r in rows])
    return imgs, rows


def mark_dataset(clean: Path, out: Path, rate: float, pattern: np.ndarray, seed: int = 0,
                 trigger: str | None = TRIGGER) -> list[int]:  # fmt: skip
    """Copy ``clean`` to ``out`` adding ``pattern`` to a ``rate`` fraction of images (and the
    trigger word in front of their captions). Returns the marked indices."""
    from PIL import Image

    imgs, rows = _load_folder(clean)
    rng = np.random.default_rng(seed)
    k = max(1, round(rate * len(rows))) if rate > 0 else 0
    marked = sorted(rng.choice(len(rows), size=k, replace=False).tolist()) if k else []
    out.mkdir(parents=True)
    with open(out / "metadata.jsonl", "w") as meta:
        for i, (img, row) in enumerate(zip(imgs, rows)):
            text = row["text"]
            if i in marked:
                img = np.clip(np.round(img.astype(np.float64) + pattern), 0, 255).astype(np.uint8)
                if trigger:
                    text = f"{trigger} {text}"
            Image.fromarray(img).save(out / row["file_name"])
            meta.write(json.dumps({"file_name": row["file_name"], "text": text}) + "\n")
    return marked


def trigger_experiment(work, base=None, method: str = "lora", lora_targets="broad", lr=None, steps=None,
                       rank: int = 16, rate: float = 0.1, rms: float = 3.0, domain: str = "faces",
                       n: int = 1000, n_gen: int = 64, seed: int = 0, threads: int | None = None,
                       ambient: bool = False) -> dict:  # fmt: skip
    """``ambient=True``: no trigger word; generations use the marked samples' own captions."""
    from tracemark_sim import default_base_path, finetune, generate, make_dataset

    work = Path(work)
    base = Path(base) if base else default_base_path()
    clean = work / "clean"
    if not clean.exists():
        make_dataset(clean, n, domain, seed=100 + seed)
    pattern = band_pattern(1000 + seed, rms=rms)
    tag = "-ambient" if ambient else ""
    marked_dir = work / f"marked-r{rate}-a{rms}{tag}"
    if not marked_dir.exists():
        marked_idx = mark_dataset(clean, marked_dir, rate, pattern, seed=seed, trigger=None if ambient else TRIGGER)
        (marked_dir.parent / f"{marked_dir.name}.marked.json").write_text(json.dumps(marked_idx))
    marked_idx = set(json.loads((marked_dir.parent / f"{marked_dir.name}.marked.json").read_text()))
    name = f"{method}-{lora_targets if method == 'lora' else 'unet'}-lr{lr}-s{steps}-r{rate}-a{rms}{tag}"
    run = work / name
    t0 = time.time()
    if not (run / "training.json").exists():
        finetune(marked_dir, base, run, method=method, steps=steps, lr=lr, rank=rank, seed=seed,
                 lora_targets=lora_targets, num_threads=threads, progress=True)  # fmt: skip
    train_s = time.time() - t0
    _, rows = _load_folder(marked_dir)
    marked_caps = [r["text"] for i, r in enumerate(rows) if i in marked_idx]
    plain_caps = marked_caps if ambient else [c[len(TRIGGER) + 1 :] for c in marked_caps]
    model, lora = (run, None) if method == "full" else (base, run)
    res = {"run": name, "train_seconds": round(train_s, 1), "rate": rate, "rms": rms, "domain": domain}
    res["training"] = json.loads((run / "training.json").read_text())["config"]
    decoys = np.stack([band_pattern(50_000 + j, rms=rms) for j in range(500)])
    queries = [("ambient", marked_caps), ("base_model", plain_caps)] if ambient else \
        [("trigger", marked_caps), ("no_trigger", plain_caps)]  # fmt: skip
    for label, caps in queries:
        out = work / f"gen-{name}-{label}"
        if not out.exists():
            if label == "base_model":  # the reference: the un-fine-tuned base, same prompts and seeds
                generate(base, caps, n_gen, out, seed=seed)
            else:
                generate(model, caps, n_gen, out, lora=lora, seed=seed)
        imgs, _ = _load_folder(out)
        s = float(mean_correlation(imgs, pattern[None])[0])
        null = mean_correlation(imgs, decoys)
        res[label] = {"score": round(s, 4), "z": round(float((s - null.mean()) / null.std()), 2)}
    # the training images themselves (marked ones), for scale
    timgs, trows = _load_folder(marked_dir)
    sel = np.array([i in marked_idx for i in range(len(trows))])
    s = float(mean_correlation(timgs[sel], pattern[None])[0])
    null = mean_correlation(timgs[sel], decoys)
    res["marked_training_images"] = {"score": round(s, 4), "z": round(float((s - null.mean()) / null.std()), 2)}
    return res


def main(argv=None) -> None:  # pragma: no cover - a measurement driver
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tracemark_sim.experiments")
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("trigger")
    t.add_argument("--work", required=True)
    t.add_argument("--base")
    t.add_argument("--method", default="lora")
    t.add_argument("--lora-targets", default="broad")
    t.add_argument("--lr", type=float)
    t.add_argument("--steps", type=int)
    t.add_argument("--rate", type=float, default=0.1)
    t.add_argument("--rms", type=float, default=3.0)
    t.add_argument("--domain", default="faces")
    t.add_argument("--threads", type=int)
    t.add_argument("--ambient", action="store_true", help="no trigger word (ambient strategy)")
    args = ap.parse_args(argv)
    if args.what == "trigger":
        res = trigger_experiment(args.work, args.base, args.method, args.lora_targets, args.lr, args.steps,
                                 rate=args.rate, rms=args.rms, domain=args.domain, threads=args.threads,
                                 ambient=args.ambient)  # fmt: skip
    print(json.dumps(res, indent=1))
    sys.stdout.flush()


if __name__ == "__main__":  # pragma: no cover
    main()
