"""How good a stand-in for Stable Diffusion is a world base? The measurements of docs/sim.md.

``python -m tracemark_sim.quality --model BASE --data HELDOUT [--n 256] [--json OUT]`` prints one
JSON object:

- ``probe``: background-colour accuracy on the 12 basic colours (:mod:`tracemark_sim.probe`);
- ``open_vocab``: for colour words of the pretraining palette and for colour words the base never
  saw (CSS names absent from it), the mean RGB error of the generated background against the
  word's colour, beside the error of guessing a random palette colour;
- ``spectrum``: radially averaged power spectra of generations and of held-out images, and their
  ratio per frequency band (the "noise floor" a faint mark must rise above);
- ``kid``: kernel inception distance with a cubic polynomial kernel, on features that need no
  download (8x8 thumbnails + log radial spectrum; there is no Inception network offline);
- ``vae``: PSNR/SSIM of one encode/decode round trip of held-out images and, per watermark
  scheme at its default strength, the aggregated z of marked images before and after the round
  trip plus the share of the mark's amplitude that survives (``gain``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

BANDS = {"low 1-4": (1, 4), "mid 4-8": (4, 8), "mid-high 8-12": (8, 12), "high 12-16": (12, 16.5)}


def radial_spectrum(images: np.ndarray) -> np.ndarray:
    """Mean radially averaged power spectrum of N x H x W x 3 images (luma, mean removed), by
    integer radius in cycles per image (0 .. H/2)."""
    x = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    x = x - x.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(x)) ** 2 / (x.shape[1] * x.shape[2])
    f = np.fft.fftfreq(x.shape[1]) * x.shape[1]
    r = np.rint(np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)).astype(int)
    n = x.shape[1] // 2 + 1
    return np.array([p[:, r == k].mean() for k in range(n)])


def band_ratios(gen: np.ndarray, real: np.ndarray) -> dict:
    sg, sr = radial_spectrum(gen), radial_spectrum(real)
    k = np.arange(len(sg))
    return {name: round(float(sg[(k >= lo) & (k < hi)].sum() / sr[(k >= lo) & (k < hi)].sum()), 3)
            for name, (lo, hi) in BANDS.items()}  # fmt: skip


def _features(images: np.ndarray) -> np.ndarray:
    from PIL import Image

    thumbs = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX), np.float64) for im in images])
    spec = np.stack([np.log(radial_spectrum(im[None])[1:] + 1e-3) for im in images])
    return np.concatenate([thumbs.reshape(len(images), -1) / 255.0, spec / 10.0], axis=1)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 between image sets (KID's estimator)."""
    fa, fb = _features(a), _features(b)
    d = fa.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731
    m, n = len(fa), len(fb)
    kaa, kbb, kab = k(fa, fa), k(fb, fb), k(fa, fb)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())  # fmt: skip


def _border_rgb(images: np.ndarray) -> np.ndarray:
    mask = np.zeros(images.shape[1:3], bool)
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = True, True, True, True
    return np.median(images[:, mask], axis=1)


def open_vocab_probe(pipe, n_words: int = 24, seed: int = 0, steps: int = 25) -> dict:
    """Background colour error (RGB distance, 0-441) for seen and never-seen colour words."""
    from matplotlib.colors import CSS4_COLORS, to_rgb

    from tracemark_sim.data import COLOURS, open_colours
    from tracemark.diffusion.generation import generate_images

    palette = open_colours()
    rng = np.random.default_rng(seed)
    seen = [w for w in palette if w not in COLOURS and " " not in w]
    seen = [seen[i] for i in rng.choice(len(seen), n_words, replace=False)]
    unseen = sorted(n for n in CSS4_COLORS if n not in palette and n.replace(" ", "") not in
                    {p.replace(" ", "") for p in palette})  # fmt: skip
    unseen = [unseen[i] for i in rng.choice(len(unseen), min(n_words, len(unseen)), replace=False)]
    truth = {**{w: np.array(palette[w], float) for w in seen},
             **{w: np.array(to_rgb(CSS4_COLORS[w])) * 255 for w in unseen}}  # fmt: skip
    out = {}
    all_rgb = np.array(list(palette.values()), float)
    for name, words in (("seen", seen), ("unseen", unseen)):
        prompts = [f"a small circle on a {w} background" for w in words]
        imgs = generate_images(pipe, prompts, seed=seed, steps=steps)
        got = _border_rgb(imgs)
        err = np.array([np.linalg.norm(g - truth[w]) for g, w in zip(got, words)])
        base = np.array([np.linalg.norm(all_rgb - truth[w], axis=1).mean() for w in words])
        out[name] = {"words": len(words), "mean_rgb_error": round(float(err.mean()), 1),
                     "random_colour_error": round(float(base.mean()), 1), "examples": words[:6]}  # fmt: skip
    return out


def mark_survival(vae, images: np.ndarray, schemes=("spread", "dwtdct", "warp", "visible"), seed: int = 0) -> dict:
    """Per scheme: aggregated z of the marked images before / after one VAE round trip, and the
    gain (projection of the round-tripped mark on the embedded mark; 1 = all of it survives)."""
    from tracemark.registry.keys import Key
    from tracemark.marking.schemes import get_scheme
    from tracemark.marking.schemes.base import clip_uint8
    from tracemark.detection.stats import aggregate, key_statistic

    def roundtrip(arr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.from_numpy(arr.astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1
            y = torch.cat([vae.decode(vae.encode(x[i : i + 64]).latent_dist.mode()).sample
                           for i in range(0, len(x), 64)])  # fmt: skip
        return clip_uint8(((y.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy())

    key = Key(np.random.default_rng(seed).bytes(32))
    clean_rt = roundtrip(images).astype(np.float64)
    out = {}
    for name in schemes:
        sch = get_scheme(name)
        marked = np.stack([sch.embed_uint8(im, key) for im in images])
        marked_rt = roundtrip(marked)

        def z(imgs) -> float:
            m = aggregate(sch.features([im.astype(np.float32) for im in imgs]), sch.kind)
            stat = float(key_statistic(m, sch.key_vectors([key]), sch.kind)[0])
            if sch.kind == "message":  # agreeing bits of L: Binomial(L, 1/2) -> z
                bits = len(m)
                return (stat - bits / 2) / np.sqrt(bits / 4)
            return stat

        d_in = (marked.astype(np.float64) - images).reshape(len(images), -1)
        d_out = (marked_rt - clean_rt).reshape(len(images), -1)
        gain = (d_in * d_out).sum(1) / np.maximum((d_in * d_in).sum(1), 1e-12)
        out[name] = {"z_files": round(z(marked), 2), "z_after_vae": round(z(marked_rt), 2),
                     "z_clean_after_vae": round(z(clean_rt.astype(np.uint8)), 2),
                     "gain": round(float(gain.mean()), 3)}  # fmt: skip
    return out


def base_report(model_dir, data_dir, n: int = 256, seed: int = 0, steps: int = 25) -> dict:
    """All the measurements above for the pipeline at ``model_dir`` against held-out ``data_dir``."""
    from tracemark.diffusion.generation import generate_images
    from tracemark_sim.pipeline import load_pipeline
    from tracemark_sim.probe import probe_model
    from tracemark.diffusion.training import load_images, read_imagefolder
    from tracemark_sim.vae import psnr_ssim

    pipe = load_pipeline(model_dir)
    rows = read_imagefolder(Path(data_dir))[:n]
    real = load_images([p for p, _ in rows], 32).permute(0, 2, 3, 1).numpy()
    gen = generate_images(pipe, [c for _, c in rows], seed=seed, steps=steps)
    report = {"model": str(model_dir), "n": len(rows)}
    report["probe"] = probe_model(model_dir, n_per_colour=8, seed=1)
    report["open_vocab"] = open_vocab_probe(pipe, seed=seed, steps=steps)
    report["spectrum_ratio_generated_over_real"] = band_ratios(gen, real)
    report["kid_vs_heldout"] = round(kid(gen, real), 4)
    vae = pipe.vae
    if hasattr(vae, "decode") and hasattr(vae.config, "latent_channels"):
        p, q = psnr_ssim(vae, torch.from_numpy(real).permute(0, 3, 1, 2))
        report["vae"] = {"psnr_db": round(p, 2), "ssim": round(q, 4), "survival": mark_survival(vae, real[:64])}
    return report


def main(argv=None) -> None:  # pragma: no cover - a measurement driver
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tracemark_sim.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="held-out imagefolder (not the pretraining images)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--json")
    ap.add_argument("--threads", type=int)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    rep = base_report(a.model, a.data, n=a.n)
    text = json.dumps(rep, indent=1, default=float)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":  # pragma: no cover
    main()
