"""Benchmark: protect throughput vs decode+encode alone vs invisible-watermark's dwtDct.

Run:  make bench          (or: .venv/bin/python bench/bench_protect.py [--n 64] [--size 512])

Measured in one run on the same 512x512 images (JPEG q90 and PNG), rate 1.0 so that every image
is decoded, marked and re-encoded, and at 2%. Prints a table; numbers are wall-clock images/second.

Baseline ("dec+enc"): decoding every image and encoding it again with the source's own settings
(the JPEG's quantisation tables and subsampling, the PNG's zlib level), what a tool that keeps the
files' structure must do at the least and what protect's writer does (tracemark.io.imaging.save_like /
write_png_like); "fast" re-encodes at JPEG q95 / zlib level 1 instead (the baseline before the
writer kept the source's settings). "@2%" is a further copy at rate 2% (``min_marked=0``) once the
dataset's one-time pass (validation, digests, thumbnails: tracemark.io.dataset.FileChecks) is in the
registry; "1st @2%" is the first copy of a fresh registry (the pass included); "@2% m50" the
product's default (2%, at least 50 marked, at most 10% of the samples by that raise).

A second table (issue #14): ``materialize`` (re-deriving an issued copy from the registry and the
original data) against ``shutil.copytree`` of the dataset, i.e. what storing copies costs to
write; and protect at rate 1.0 on Ray (a local Ray instance with the same number of CPUs, started
before the timing; its start-up is printed apart) against the process pool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tracemark.registry.database import Registry
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.marking.protect import protect
from tracemark.marking.materialize import materialize


def decode_encode(src: str, dst: str) -> None:
    """Decode, then encode with the source's own settings (what protect's writer keeps)."""
    im = Image.open(src)
    _encode_like(np.asarray(im.convert("RGB")), im, src, dst)


def _encode_like(arr: np.ndarray, im: Image.Image, src: str, dst: str) -> None:
    """Encode an RGB array with the settings of the source ``im`` (read from ``src``)."""
    from PIL import JpegImagePlugin

    from tracemark.io.imaging import png_chunks, png_zlib_level

    out = Image.fromarray(arr)
    if im.format == "JPEG":
        out.save(dst, "JPEG", qtables=im.quantization, subsampling=JpegImagePlugin.get_sampling(im))
    else:
        idat = next(p for t, p in png_chunks(Path(src).read_bytes()) if t == b"IDAT")
        out.save(dst, im.format, compress_level=png_zlib_level(idat[:3]))


def decode_encode_fast(src: str, dst: str) -> None:
    """The earlier baseline: JPEG q95, PNG zlib level 1, whatever the source used."""
    im = Image.open(src)
    out = Image.fromarray(np.asarray(im.convert("RGB")))
    if im.format == "JPEG":
        out.save(dst, "JPEG", quality=95)
    else:
        out.save(dst, im.format, compress_level=1)


def iwm_embed(src: str, dst: str) -> None:
    import cv2
    from imwatermark import WatermarkEncoder

    bgr = cv2.imread(src)
    enc = WatermarkEncoder()
    enc.set_watermark("bytes", b"tmrk")
    out = enc.encode(bgr, "dwtDct")
    cv2.imwrite(dst, out, [cv2.IMWRITE_JPEG_QUALITY, 95] if dst.endswith(".jpg") else [])


def iwm_embed_like(src: str, dst: str) -> None:
    """invisible-watermark's dwtDct embedding, written with the source's own settings (the JPEG's
    tables and subsampling, the PNG's zlib level) like decode_encode: its marking cost apart from
    cv2's writer, whose defaults (JPEG q95 here, PNG zlib level 1) differ from the source's."""
    import cv2
    from imwatermark import WatermarkEncoder

    im = Image.open(src)
    bgr = np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
    enc = WatermarkEncoder()
    enc.set_watermark("bytes", b"tmrk")
    _encode_like(np.ascontiguousarray(enc.encode(bgr, "dwtDct")[..., ::-1]), im, src, dst)


def timed_pool(fn, files, out_dir: Path, workers: int) -> float:
    out_dir.mkdir(parents=True, exist_ok=True)
    dsts = [str(out_dir / Path(f).name) for f in files]
    t = time.perf_counter()
    if workers == 1:
        for s, d in zip(files, dsts):
            fn(s, d)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(fn, files, dsts, chunksize=4))
    return len(files) / (time.perf_counter() - t)


def scale_rows(n: int, size: int, workers: int) -> list[dict]:
    """protect and materialize at 2% on a larger dataset, where a copy's fixed costs (one SSIM per
    marked file up to 16, the key's pattern, the registry) are spread over more files."""
    rows = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for fmt in ("jpeg", "png"):
            data = make_sample_dataset(tmp / f"data_{fmt}", n=n, size=size, seed=1, fmt=fmt)
            files = sorted(str(p) for p in data.iterdir() if p.suffix != ".jsonl")
            de = timed_pool(decode_encode, files, tmp / f"de_{fmt}", workers)
            reg = Registry.init(tmp / f"home_{fmt}")
            t = time.perf_counter()
            protect(data, tmp / f"first_{fmt}", "first", registry=reg, rate=0.02, min_marked=0, workers=workers)
            first = n / (time.perf_counter() - t)
            t = time.perf_counter()
            protect(data, tmp / f"copy_{fmt}", "bench", registry=reg, rate=0.02, min_marked=0, workers=workers)
            pr = n / (time.perf_counter() - t)
            t = time.perf_counter()
            protect(data, tmp / f"hard_{fmt}", "linked", registry=reg, rate=0.02, min_marked=0, workers=workers,
                    link="hard")
            hard = n / (time.perf_counter() - t)
            t = time.perf_counter()
            shutil.copytree(data, tmp / f"plain_{fmt}")
            cp = n / (time.perf_counter() - t)
            t = time.perf_counter()
            materialize(reg, "bench", tmp / f"mat_{fmt}", workers=workers)
            mat = n / (time.perf_counter() - t)
            rows.append({"format": fmt, "scale": True, "n": n, "size": size, "decode_encode_ips": round(de, 1),
                         "first_copy_ips": round(first, 1), "protect_2pct_ips": round(pr, 1),
                         "protect_2pct_vs_decode_encode": round(pr / de, 2), "copytree_ips": round(cp, 1),
                         "protect_2pct_hard_ips": round(hard, 1), "protect_2pct_hard_vs_decode_encode": round(hard / de, 2),
                         "materialize_2pct_ips": round(mat, 1), "materialize_2pct_vs_copytree": round(mat / cp, 3)})
            reg.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine timing")
    ap.add_argument("--n-large", type=int, default=500,
                    help="images of the scale rows (2%% of them marked, the fixed costs of a copy amortised); 0: skip")
    args = ap.parse_args()
    workers = min(2, os.cpu_count() or 1)
    rows = []
    ray, ray_start = None, None
    if not args.no_ray:
        try:
            import ray

            t = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            ray_start = time.perf_counter() - t
        except ImportError:
            ray = None
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        for fmt in ("jpeg", "png"):
            data = make_sample_dataset(tmp / f"data_{fmt}", n=args.n, size=args.size, seed=0, fmt=fmt)
            files = sorted(str(p) for p in data.iterdir() if p.suffix != ".jsonl")
            timed_pool(decode_encode, files[:4], tmp / "warm", 1)  # warm caches
            de = timed_pool(decode_encode, files, tmp / f"de_{fmt}", workers)
            de_fast = timed_pool(decode_encode_fast, files, tmp / f"def_{fmt}", workers)
            # the first copy of a fresh registry at 2%: the dataset's one-time pass included
            reg0 = Registry.init(tmp / f"home0_{fmt}")
            t = time.perf_counter()
            protect(data, tmp / f"copy0_{fmt}", "bench0", registry=reg0, rate=0.02, min_marked=0, workers=workers)
            pr_first = args.n / (time.perf_counter() - t)
            reg0.close()
            reg = Registry.init(tmp / f"home_{fmt}")
            t = time.perf_counter()
            res = protect(data, tmp / f"copy_{fmt}", "bench", registry=reg, rate=1.0, workers=workers)
            pr = args.n / (time.perf_counter() - t)
            t = time.perf_counter()
            res2 = protect(data, tmp / f"copy2_{fmt}", "bench2", registry=reg, rate=0.02, min_marked=0,
                           workers=workers)
            pr2 = args.n / (time.perf_counter() - t)
            t = time.perf_counter()
            res3 = protect(data, tmp / f"copy3_{fmt}", "bench3", registry=reg, rate=0.02, workers=workers)
            pr3 = args.n / (time.perf_counter() - t)
            row = {"format": fmt, "n": args.n, "size": args.size, "workers": workers,
                   "decode_encode_ips": round(de, 1), "decode_encode_fast_ips": round(de_fast, 1),
                   "protect_ips": round(pr, 1),
                   "protect_vs_decode_encode": round(pr / de, 3), "psnr_mean": round(res.psnr_mean, 2),
                   "psnr_min": round(res.psnr_min, 2),
                   "ssim_mean": round(res.ssim_mean, 4), "protect_default_rate_ips": round(pr2, 1),
                   "protect_default_rate_vs_decode_encode": round(pr2 / de, 2),
                   "protect_default_rate_marked": res2.n_marked,
                   "protect_first_2pct_ips": round(pr_first, 1),
                   "protect_first_2pct_vs_decode_encode": round(pr_first / de, 2),
                   "protect_min50_ips": round(pr3, 1), "protect_min50_marked": res3.n_marked,
                   "protect_min50_vs_decode_encode": round(pr3 / de, 2)}
            try:
                iw1 = timed_pool(iwm_embed, files, tmp / f"iwm1_{fmt}", 1)
                iw2 = timed_pool(iwm_embed, files, tmp / f"iwm2_{fmt}", workers)
                iw3 = timed_pool(iwm_embed_like, files, tmp / f"iwm3_{fmt}", workers)
                row.update({"iwm_dwtdct_ips_1proc": round(iw1, 1), "iwm_dwtdct_ips_pool": round(iw2, 1),
                            "protect_vs_iwm_pool": round(pr / iw2, 2), "protect_vs_iwm_1proc": round(pr / iw1, 2),
                            "iwm_dwtdct_source_settings_ips_pool": round(iw3, 1),
                            "protect_vs_iwm_source_settings_pool": round(pr / iw3, 2)})
            except ImportError:
                row["iwm"] = "invisible-watermark not installed"
            # materialize the two issued copies again vs copying the dataset as it is
            t = time.perf_counter()
            shutil.copytree(data, tmp / f"plain_{fmt}")
            cp = args.n / (time.perf_counter() - t)
            mat = {}
            for lic, rate_name in (("bench", "1.0"), ("bench2", "0.02"), ("bench3", "m50")):
                t = time.perf_counter()
                materialize(reg, lic, tmp / f"mat_{lic}_{fmt}", workers=workers)
                mat[rate_name] = args.n / (time.perf_counter() - t)
            row.update({"copytree_ips": round(cp, 1), "materialize_rate1_ips": round(mat["1.0"], 1),
                        "materialize_default_rate_ips": round(mat["0.02"], 1),
                        "materialize_default_rate_vs_copytree": round(mat["0.02"] / cp, 3),
                        "materialize_min50_ips": round(mat["m50"], 1)})
            if ray is not None:
                t = time.perf_counter()
                protect(data, tmp / f"copy_ray_{fmt}", "bench_ray", registry=reg, rate=1.0, workers=workers,
                        engine="ray")
                row.update({"protect_ray_ips": round(args.n / (time.perf_counter() - t), 1),
                            "ray_start_s": round(ray_start, 1)})
            rows.append(row)
            shutil.rmtree(tmp / f"copy_{fmt}")
    print(f"protect benchmark: {args.n} images of {args.size}x{args.size}, {workers} worker processes; "
          "'protect/s' marks every image (rate 1.0); '@2%/s' a further copy at 2% after the dataset's one-time pass, "
          "'1st @2%/s' the first one (pass included), '@2% m50/s' the default (2%, at least 50 marked); ratios are "
          "to 'dec+enc/s' (source settings); 'vs iwm' = protect (rate 1.0) / invisible-watermark dwtDct, both on the "
          "process pool; 'iwm src' = dwtDct written with the source's settings like dec+enc (cv2 writes JPEG q95 and "
          "PNG zlib level 1), 'vs src' protect / that")
    print(f"{'format':6} {'dec+enc/s':>9} {'fast/s':>7} {'protect/s':>9} {'ratio':>5} {'1st@2%/s':>8} {'ratio':>5} "
          f"{'@2%/s':>7} {'ratio':>5} {'@2%m50/s':>8} {'iwm/s 1p':>8} {'iwm pool':>8} {'vs iwm':>6} {'iwm src':>7} "
          f"{'vs src':>6} {'PSNR':>6} "
          f"{'min':>6} {'SSIM':>7}")
    for r in rows:
        print(f"{r['format']:6} {r['decode_encode_ips']:9.1f} {r['decode_encode_fast_ips']:7.1f} {r['protect_ips']:9.1f} "
              f"{r['protect_vs_decode_encode']:5.2f} {r['protect_first_2pct_ips']:8.1f} "
              f"{r['protect_first_2pct_vs_decode_encode']:5.2f} {r['protect_default_rate_ips']:7.1f} "
              f"{r['protect_default_rate_vs_decode_encode']:5.2f} {r['protect_min50_ips']:8.1f} "
              f"{r.get('iwm_dwtdct_ips_1proc', float('nan')):8.1f} "
              f"{r.get('iwm_dwtdct_ips_pool', float('nan')):8.1f} {r.get('protect_vs_iwm_pool', float('nan')):6.2f} "
              f"{r.get('iwm_dwtdct_source_settings_ips_pool', float('nan')):7.1f} "
              f"{r.get('protect_vs_iwm_source_settings_pool', float('nan')):6.2f} "
              f"{r['psnr_mean']:6.2f} {r['psnr_min']:6.2f} {r['ssim_mean']:7.4f}")
    print(f"\nre-deriving copies (materialize) vs storing them (shutil.copytree of the dataset), and protect at rate "
          f"1.0 on Ray vs the process pool ({workers} CPUs each"
          + (f"; Ray start-up {ray_start:.1f} s, not timed)" if ray_start is not None else "; Ray not run)"))
    print(f"{'format':6} {'copytree/s':>10} {'mat@1.0/s':>10} {'mat@2%/s':>9} {'ratio':>6} {'mat m50/s':>9} "
          f"{'pool/s':>8} {'ray/s':>8} {'ray/pool':>8}")
    for r in rows:
        ray_ips = r.get("protect_ray_ips", float("nan"))
        print(f"{r['format']:6} {r['copytree_ips']:10.1f} {r['materialize_rate1_ips']:10.1f} "
              f"{r['materialize_default_rate_ips']:9.1f} {r['materialize_default_rate_vs_copytree']:6.2f} "
              f"{r['materialize_min50_ips']:9.1f} {r['protect_ips']:8.1f} {ray_ips:8.1f} "
              f"{ray_ips / r['protect_ips']:8.2f}")
    if ray is not None:
        ray.shutdown()
    if args.n_large:
        scale = scale_rows(args.n_large, args.size, workers)
        print(f"\nat scale: {args.n_large} images of {args.size}x{args.size}, a copy at 2% ({args.n_large // 50} "
              "marked, min_marked=0) once the one-time pass is in the registry, vs decoding and re-encoding the "
              "dataset (source settings) and copying it")
        print(f"{'format':6} {'dec+enc/s':>9} {'pass/s':>8} {'@2%/s':>8} {'ratio':>6} {'linked/s':>8} {'ratio':>6} "
              f"{'copytree/s':>10} {'mat@2%/s':>9} {'ratio':>6}   ('linked': --link hard)")
        for r in scale:
            print(f"{r['format']:6} {r['decode_encode_ips']:9.1f} {r['first_copy_ips']:8.1f} {r['protect_2pct_ips']:8.1f} "
                  f"{r['protect_2pct_vs_decode_encode']:6.2f} {r['protect_2pct_hard_ips']:8.1f} "
                  f"{r['protect_2pct_hard_vs_decode_encode']:6.2f} {r['copytree_ips']:10.1f} "
                  f"{r['materialize_2pct_ips']:9.1f} {r['materialize_2pct_vs_copytree']:6.2f}")
        rows += scale
    print(f"rerun: make bench   (or .venv/bin/python bench/bench_protect.py --n {args.n} --size {args.size} "
          f"--n-large {args.n_large})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main())
