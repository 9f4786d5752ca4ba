"""How much of each scheme's mark survives the public base's autoencoder (encode -> decode).

A fine-tuned latent diffusion model can only learn what its autoencoder's latents carry: a mark
the VAE removes is never in the training signal. For each scheme spec, mark the first ``--n``
images of a folder with one key, round-trip marked and clean images through the base's VAE
(posterior mean) and report: PSNR on the marked images, the per-image z before and after the
round trip, and the fraction of the mark's amplitude that the round trip keeps
(<VAE(x+d) - VAE(x), d> / <d, d>).

    python -m research.vae_transmission --base testworld/tracemark_sim/base_model \
        --data results/tmp/grid/data/faces_1000_11 --n 64 \
        'spread:strength=3.2' 'spread:strength=3.2;band=[11,14]' 'tile:strength=3.2;band=[1,12]' \
        'tile:strength=3.2' 'spectral:strength=3.2;grid=32;band=[0.3,0.6]' 'visible:cells=16'
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from tracemark.registry.keys import Key
    from tracemark.marking.schemes import get_scheme, parse_params

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="pipeline folder with a vae/ subfolder")
    ap.add_argument("--data", required=True, help="image folder")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=0, help="resize images to this square size (0: as they are)")
    ap.add_argument("specs", nargs="+", help="scheme:key=value;key=value")
    a = ap.parse_args(argv)
    vae = AutoencoderKL.from_pretrained(a.base, subfolder="vae").eval()
    files = sorted(p for p in Path(a.data).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: a.n]
    ims = []
    for p in files:
        im = Image.open(p).convert("RGB")
        if a.size:
            im = im.resize((a.size, a.size), Image.Resampling.BICUBIC)
        ims.append(np.asarray(im, np.float32))
    ims = np.stack(ims)

    def roundtrip(x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), 16):
            t = torch.from_numpy(x[i:i + 16]).permute(0, 3, 1, 2) / 127.5 - 1
            with torch.no_grad():
                y = vae.decode(vae.encode(t).latent_dist.mean).sample
            out.append(((y.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)

    clean = roundtrip(ims)
    key = Key(b"vae-transmission".ljust(32, b"\0"))
    print(f"{len(ims)} images of {a.data}, VAE of {a.base}")
    for spec in a.specs:
        name, _, opts = spec.partition(":")
        sch = get_scheme(name, **parse_params([o for o in opts.split(";") if o]))
        marked = np.stack([np.clip(np.rint(sch.embed(x, key)), 0, 255) for x in ims]).astype(np.float32)
        rt = roundtrip(marked)
        d_in, d_out = marked - ims, rt - clean
        kept = float((d_out * d_in).sum() / max((d_in * d_in).sum(), 1e-12))
        psnr = 10 * np.log10(255**2 / max(float(((marked - ims) ** 2).mean()), 1e-12))
        z_in = float(sch.score(list(marked), [key]).mean())
        z_out = float(sch.score(list(rt), [key]).mean())
        print(f"{spec:48s} PSNR {psnr:5.2f} dB  per-image z {z_in:5.2f} -> {z_out:5.2f} after the VAE  amplitude kept {kept:.2f}")


if __name__ == "__main__":
    main()
