"""Named image attacks with parameter grids, for robustness evaluations (reusable by users).

Each attack maps an RGB float32 array (H x W x 3, 0..255) to another; ``ATTACKS[name](image,
param)`` applies one, ``GRIDS[name]`` lists the parameters the evaluations sweep. Pillow and
scipy only, so attacks run anywhere the package does.

*Copy-level* attacks see the whole copy at once, as an abuser holding it does:
``COPY_ATTACKS[name](images, param)`` maps a list of images to a list (``COPY_GRIDS`` the sweep).
*Model* attacks launder the images through the public base model (``MODEL_ATTACKS``, ``MODEL_GRIDS``:
the VAE round trip, img2img); torch and diffusers are imported only when one runs.

:func:`attack_copy` applies any of them (or ``clean_mix``: the abuser's clean data mixed in) to a whole
issued copy on disk and writes the attacked copy, to fine-tune on with any trainer (``ALL_GRIDS``).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32)


def jpeg(x: np.ndarray, quality: float) -> np.ndarray:
    buf = io.BytesIO()
    _pil(x).save(buf, "JPEG", quality=int(quality))
    return _arr(Image.open(buf))


def resize(x: np.ndarray, factor: float) -> np.ndarray:
    im = _pil(x)
    w, h = max(8, round(im.width * factor)), max(8, round(im.height * factor))
    return _arr(im.resize((w, h), Image.Resampling.BICUBIC))


def resize_back(x: np.ndarray, factor: float) -> np.ndarray:
    """Downscale by ``factor`` and back to the original size (bicubic both ways): the detail above
    the smaller image's Nyquist limit is lost, the size is kept."""
    im = _pil(x)
    w, h = max(1, round(im.width * factor)), max(1, round(im.height * factor))
    return _arr(im.resize((w, h), Image.Resampling.BICUBIC).resize(im.size, Image.Resampling.BICUBIC))


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return _arr(_pil(x).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def noise(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(x + rng.normal(0, sigma, size=x.shape), 0, 255).astype(np.float32)


def crop(x: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the central ``1 - fraction`` of each side (no resize back)."""
    h, w = x.shape[:2]
    dh, dw = int(round(h * fraction / 2)), int(round(w * fraction / 2))
    return x[dh:h - dh or None, dw:w - dw or None].copy()


def random_crop(x: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A window of ``1 - fraction`` of each side at a random (seeded) place, resized back to the
    original size (bicubic): what fine-tuning pipelines' random-crop augmentation does. Unlike
    :func:`crop` the mark's grid is shifted by an unknown offset and rescaled."""
    h, w = x.shape[:2]
    ch, cw = max(1, round(h * (1 - fraction))), max(1, round(w * (1 - fraction)))
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = _pil(x[top:top + ch, left:left + cw])
    return _arr(window.resize((w, h), Image.Resampling.BICUBIC))


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    return _arr(_pil(x).rotate(float(degrees), resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)))


def color_jitter(x: np.ndarray, amount: float) -> np.ndarray:
    """Brightness and contrast both scaled by (1 + amount), saturation by (1 - amount)."""
    im = _pil(x)
    im = ImageEnhance.Brightness(im).enhance(1 + amount)
    im = ImageEnhance.Contrast(im).enhance(1 + amount)
    im = ImageEnhance.Color(im).enhance(1 - amount)
    return _arr(im)


def identity(x: np.ndarray, _: float = 0.0) -> np.ndarray:
    return x


ATTACKS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "none": identity,
    "jpeg": jpeg,
    "resize": resize,
    "resize_back": resize_back,
    "blur": blur,
    "noise": noise,
    "crop": crop,
    "random_crop": random_crop,
    "rotate": rotate,
    "color_jitter": color_jitter,
}

GRIDS: dict[str, list[float]] = {
    "none": [0.0],
    "jpeg": [90, 75, 50, 30],
    "resize": [0.5, 0.75, 0.9, 1.1, 1.5],
    "resize_back": [0.5, 0.75],
    "blur": [0.5, 1.0, 2.0],
    "noise": [2.0, 5.0, 10.0],
    "crop": [0.05, 0.1, 0.2],
    "random_crop": [0.05, 0.1, 0.2],
    "rotate": [1.0, 5.0],
    "color_jitter": [0.1, 0.3],
}


def apply(name: str, x: np.ndarray, param: float) -> np.ndarray:
    try:
        fn = ATTACKS[name]
    except KeyError:
        from tracemark.errors import TracemarkError

        raise TracemarkError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}") from None
    return fn(np.asarray(x, dtype=np.float32), param)


# --- copy-level attacks -----------------------------------------------------------------------

def _highpass(x: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return x - gaussian_filter(x, sigma=(sigma, sigma, 0))


def average_removal(images: list[np.ndarray], threshold: float = 4.0, rounds: int = 2) -> list[np.ndarray]:
    """Estimate a pattern shared by some images of the copy and subtract it from them.

    The attack on any fixed-pattern mark (one pattern per copy, added to its marked images): the
    mean of the images' high-pass residuals holds ``rate x pattern`` above content that averages
    out; images whose residual correlates with that mean beyond ``threshold`` robust z-scores
    (median / MAD over the copy) are taken as the marked ones, the pattern is re-estimated from them
    alone (``rounds`` times) and subtracted from them. Images of other sizes than the most common
    one are passed through. Needs no key; costs the abuser one pass over the copy.
    """
    from collections import Counter

    arrs = [np.asarray(x, np.float32) for x in images]
    shape = Counter(a.shape for a in arrs).most_common(1)[0][0]
    idx = [i for i, a in enumerate(arrs) if a.shape == shape]
    R = np.stack([_highpass(arrs[i]) for i in idx]).reshape(len(idx), -1)
    R -= R.mean(axis=1, keepdims=True)
    Rn = R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-9)
    est = R.mean(axis=0)
    chosen = np.zeros(len(idx), bool)
    for _ in range(max(1, int(rounds))):
        score = Rn @ (est / max(np.linalg.norm(est), 1e-9))
        med = np.median(score)
        mad = np.median(np.abs(score - med)) * 1.4826 + 1e-12
        chosen = (score - med) / mad > threshold
        if not chosen.any():
            return [a.copy() for a in arrs]
        est = R[chosen].mean(axis=0)
    out = [a.copy() for a in arrs]
    pattern = est.reshape(shape)
    for j in np.flatnonzero(chosen):
        out[idx[j]] = np.clip(arrs[idx[j]] - pattern, 0, 255)
    return out


COPY_ATTACKS: dict[str, Callable[[list[np.ndarray], float], list[np.ndarray]]] = {
    "average_removal": average_removal,
}

COPY_GRIDS: dict[str, list[float]] = {
    "average_removal": [3.0, 4.0, 6.0],
}


# --- model attacks: laundering through the public base model --------------------------------------

def vae(images: list[np.ndarray], _: float = 0.0, *, pipe, prompts=None, seed: int = 0) -> list[np.ndarray]:
    """Regeneration through the public VAE (:func:`tracemark.diffusion.generation.vae_roundtrip`)."""
    from tracemark.diffusion.generation import vae_roundtrip

    return vae_roundtrip(images, pipe)


def img2img(images: list[np.ndarray], strength: float, *, pipe, prompts, seed: int = 0) -> list[np.ndarray]:
    """Img2img with the base model at ``strength``, each image with its caption
    (:func:`tracemark.diffusion.generation.regenerate`). Images are batched by size; an output the
    pipeline returns at another size (it rounds to its VAE's factor) is resized back."""
    from tracemark.diffusion.generation import regenerate

    arrs = [np.asarray(im, np.float32) for im in images]
    out: list[np.ndarray | None] = [None] * len(arrs)
    by_shape: dict[tuple, list[int]] = {}
    for i, a in enumerate(arrs):
        by_shape.setdefault(a.shape, []).append(i)
    offset = 0
    for shape, idx in by_shape.items():  # distinct seeds across groups: image j of group g gets seed + offset + j
        res = regenerate([arrs[i] for i in idx], [prompts[i] for i in idx], pipe, strength=float(strength),
                         seed=seed + offset)
        offset += len(idx)
        for i, y in zip(idx, res):
            if y.shape[:2] != shape[:2]:
                y = np.asarray(Image.fromarray(y).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))
            out[i] = y.astype(np.float32)
    return out  # type: ignore[return-value]


#: Attacks that need the base model (a loaded pipeline, ``pipe``): ``MODEL_ATTACKS[name](images,
#: param, pipe=..., prompts=..., seed=...)``; torch and diffusers are imported only when one runs.
MODEL_ATTACKS: dict[str, Callable[..., list[np.ndarray]]] = {
    "vae": vae,
    "img2img": img2img,
}

MODEL_GRIDS: dict[str, list[float]] = {
    "vae": [0.0],
    "img2img": [0.1, 0.2, 0.3],
}

#: Mixing the abuser's own clean data into the copy: ``param`` x the copy's size, drawn from ``clean_dir``.
MIX_GRIDS: dict[str, list[float]] = {
    "clean_mix": [1.0, 2.0],
}

#: Every countermeasure :func:`attack_copy` applies, with the parameters an evaluation sweeps.
ALL_GRIDS: dict[str, list[float]] = {**GRIDS, **COPY_GRIDS, **MODEL_GRIDS, **MIX_GRIDS}

#: Model attacks run on this many images at a time (memory stays bounded on large copies).
MODEL_CHUNK = 64


# --- attacking an issued copy on disk -------------------------------------------------------------

def _seed_for(seed: int, i: int) -> int:
    return int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])


def _read(path) -> tuple[np.ndarray, Image.Image]:
    from tracemark.errors import TracemarkError

    try:
        im = Image.open(path)
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise TracemarkError(f"{path}: not a readable image ({exc.__class__.__name__})") from exc
    return np.asarray(im.convert("RGB"), dtype=np.float32), im


def _write(x: np.ndarray, source: Image.Image, dest) -> None:
    """``x`` in the source's format and mode: same size and a mode tracemark writes back ->
    :func:`tracemark.io.imaging.save_like` (JPEG with the source's tables, PNG lossless, ...);
    otherwise (the attack changed the size, or an odd mode) Pillow in the source's format, RGB (or
    grey), a JPEG at the source's tables."""
    from tracemark.io.dataset import SUPPORTED_MODES
    from tracemark.io.imaging import save_like

    arr = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if arr.shape[:2] == (source.height, source.width) and source.mode in SUPPORTED_MODES:
        save_like(arr, source, dest)
        return
    im = Image.fromarray(arr, "RGB")
    if source.mode in ("L", "LA", "I", "I;16"):
        im = im.convert("L")
    fmt = source.format or "PNG"
    kwargs: dict = {}
    if fmt == "JPEG" and getattr(source, "quantization", None):
        kwargs["qtables"] = source.quantization
    elif fmt == "WEBP":
        kwargs["lossless"] = bool(source.info.get("lossless"))
    im.save(dest, format=fmt, **kwargs)


def _draw_clean(clean_dir, k: int, seed: int) -> list:
    """``k`` samples of ``clean_dir`` drawn with ``seed``, without replacement, in the folder's order."""
    from tracemark.errors import TracemarkError
    from tracemark.io.dataset import load_dataset

    clean = load_dataset(clean_dir)
    if len(clean) < k:
        raise TracemarkError(f"{clean_dir}: {len(clean)} clean samples, fewer than the {k} the mix needs "
                             f"(factor x the copy's size)")
    pick = sorted(np.random.default_rng(seed).choice(len(clean), size=k, replace=False).tolist())
    return [clean.samples[i] for i in pick]


def _write_clean(drawn: list, out_root, caption_col: str, image_col: str, meta_name: str, taken: set[str]) -> None:
    """The drawn clean samples, copied byte for byte into a folder of their own (a name the copy does
    not use) with its own metadata file in the copy's format and column names."""
    import shutil

    from tracemark.io.dataset import write_metadata

    folder, n = "clean_mix", 1
    while folder in taken:
        n += 1
        folder = f"clean_mix_{n}"
    (out_root / folder).mkdir(parents=True)
    width = max(5, len(str(len(drawn) - 1)))
    rows = []
    for j, s in enumerate(drawn):
        fname = f"{j:0{width}d}{s.path.suffix.lower()}"
        shutil.copyfile(s.path, out_root / folder / fname)
        rows.append({image_col: fname, caption_col: s.text})
    write_metadata(out_root / folder / meta_name, rows)


def attack_copy(copy_dir, out_dir, name: str, param: float, *, pipe=None, clean_dir=None, seed: int = 0,
                caption_column: str | None = None, image_column: str | None = None):
    """Apply countermeasure ``name`` at ``param`` to a whole copy (an imagefolder) and write the
    attacked copy, ready for any trainer, to ``out_dir``; returns its path.

    ``name``: a per-image attack (:data:`ATTACKS`; ``noise`` and ``random_crop`` draw each image's
    randomness from ``seed`` and its index), a copy-level one (:data:`COPY_ATTACKS`), a model one
    (:data:`MODEL_ATTACKS`, needs ``pipe``: the public base, e.g. ``tracemark.diffusion.loading.load_pipeline``)
    or ``clean_mix`` (``param`` x the copy's size samples drawn with ``seed`` from ``clean_dir``, another
    imagefolder, added with their captions in a folder of their own; the copy is kept as is).
    :data:`ALL_GRIDS` lists every name and its parameters. Each sample keeps its file name, format
    and mode (JPEG at its own tables, PNG lossless); metadata files are copied unchanged (rows and
    captions); ``none`` copies the files byte for byte. Written to a temporary sibling and renamed:
    ``out_dir`` must be new (or an empty folder) and outside ``copy_dir``, which is only read.
    Countermeasures compose: attack the attacked copy again.
    """
    import math
    import shutil
    from pathlib import Path

    from tracemark.errors import TracemarkError  # a Python API only: its errors name no CLI flags (no params)
    from tracemark.io.dataset import is_inside, load_dataset
    from tracemark.io.safe_write import atomic_dir, check_output_dir

    if name not in ALL_GRIDS:
        raise TracemarkError(f"unknown attack '{name}'; choose one of {', '.join(ALL_GRIDS)}")
    if isinstance(param, bool) or not isinstance(param, (int, float, np.integer, np.floating)) \
            or not math.isfinite(param):
        raise TracemarkError(f"param must be a finite number, got {param!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TracemarkError(f"seed must be a non-negative integer, got {seed!r}")
    if name in MODEL_ATTACKS and pipe is None:
        raise TracemarkError(f"attack '{name}' runs the base model: pass pipe (a loaded pipeline, "
                             "tracemark.diffusion.loading.load_pipeline)")
    if name == "img2img" and not 0 < param <= 1:
        raise TracemarkError(f"img2img strength must be in (0, 1], got {param}")
    if name == "clean_mix":
        if clean_dir is None:
            raise TracemarkError("clean_mix adds the abuser's clean data: pass clean_dir (an imagefolder)")
        if param <= 0:
            raise TracemarkError(f"clean_mix factor must be positive, got {param}")
    copy_dir, out = Path(copy_dir), Path(out_dir)
    needs_captions = name in MODEL_ATTACKS or name == "clean_mix"
    ds = load_dataset(copy_dir, caption_column, image_column, captions=needs_captions)
    check_output_dir(out, "out_dir", new=False)  # not in the tracemark home, not a symlink
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TracemarkError(f"{out}: already exists and is not an empty folder; out_dir must be new")
    if is_inside(out, copy_dir) or is_inside(copy_dir, out):
        raise TracemarkError(f"{out}: out_dir must lie outside the copy {copy_dir} (the copy is only read)")
    if clean_dir is not None and name == "clean_mix" and is_inside(clean_dir, out):
        raise TracemarkError(f"{clean_dir}: clean_dir lies inside out_dir")
    drawn = _draw_clean(clean_dir, int(round(param * len(ds))), seed) if name == "clean_mix" else []

    with atomic_dir(out) as tmp:
        for meta in ds.metadata_files:  # rows and captions unchanged: the files themselves
            dest = tmp / meta.relative_to(copy_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(meta, dest)
        samples = ds.samples
        if name in ("none", "clean_mix"):
            for s in samples:
                (tmp / s.file_name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s.path, tmp / s.file_name)
        elif name in ATTACKS:
            fn = ATTACKS[name]
            seeded = name in ("noise", "random_crop")
            for i, s in enumerate(samples):
                x, im = _read(s.path)
                y = fn(x, param, seed=_seed_for(seed, i)) if seeded else fn(x, param)
                _write(y, im, tmp / s.file_name)
        elif name in COPY_ATTACKS:
            read = [_read(s.path) for s in samples]
            ys = COPY_ATTACKS[name]([x for x, _ in read], param)
            for s, (_, im), y in zip(samples, read, ys):
                _write(y, im, tmp / s.file_name)
        else:
            fn = MODEL_ATTACKS[name]
            for start in range(0, len(samples), MODEL_CHUNK):
                part = samples[start:start + MODEL_CHUNK]
                read = [_read(s.path) for s in part]
                ys = fn([x for x, _ in read], param, pipe=pipe, prompts=[s.text for s in part], seed=seed + start)
                for s, (_, im), y in zip(part, read, ys):
                    _write(y, im, tmp / s.file_name)
        if drawn:
            taken = {s.file_name.split("/")[0] for s in samples} | {m.relative_to(copy_dir).parts[0]
                                                                     for m in ds.metadata_files}
            _write_clean(drawn, tmp, ds.caption_column, ds.image_column, ds.metadata_files[0].name, taken)
    return out
