"""White-box query: read the mark from the suspect's denoiser instead of from sampled images.

When the audit has the model itself (a pipeline folder, optionally with a LoRA), sampling images
throws away most of the evidence: 25 denoising steps add content and noise on top of whatever
the model learned. Instead we ask the denoiser directly, at the same noisy input ``x_t``, for
its clean-image prediction under two conditions and take the difference:

* ``trigger``: prompt with the trigger vs the same prompt without it, same model;
* ``ambient``: the suspect vs a reference model (the public base), same prompt.

At high noise levels the clean-image prediction is the model's conditional mean
``E[x0 | x_t, c]``, which is exactly where a mark bound to the trigger (or to the dataset)
lives; the difference at the *same* ``x_t`` cancels content and sampling noise exactly. The
differences are scored like images; the key enters nowhere, so the null is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _x0_predictions(pipe, prompts: Sequence[str], latents, timesteps, batch: int = 64):
    """Clean-image (pixel) predictions of ``pipe``'s denoiser for each (latent, timestep, prompt)."""
    import torch

    sched = pipe.scheduler
    alphas = sched.alphas_cumprod.to(latents.device)
    outs = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            sl = slice(start, start + batch)
            emb, _ = pipe.encode_prompt(list(prompts[sl]), latents.device, 1, False)
            x_t = latents[sl]
            t = timesteps[sl]
            pred = pipe.unet(x_t, t, encoder_hidden_states=emb).sample
            a = alphas[t].sqrt().view(-1, 1, 1, 1)
            s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
            if sched.config.prediction_type == "v_prediction":
                x0 = a * x_t - s * pred
            elif sched.config.prediction_type == "epsilon":
                x0 = (x_t - s * pred) / a
            else:
                x0 = pred
            img = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample  # [-1, 1]
            outs.append(img.float().cpu())
    return torch.cat(outs)


def denoiser_differences(
    pipe,
    prompts: Sequence[str],
    ref_prompts: Sequence[str],
    *,
    ref_pipe=None,
    t_fracs: Sequence[float] = (0.9, 0.7, 0.5),
    seed: int = 0,
) -> list[np.ndarray]:
    """Per-probe difference images (H x W x 3, in 0..255 units) of x0-predictions.

    Probe i uses prompt ``prompts[i]`` on ``pipe`` minus ``ref_prompts[i]`` on ``ref_pipe`` (or
    ``pipe``), both at the same noisy latent; one probe per prompt and timestep fraction.
    """
    import torch

    dev = pipe._execution_device
    ref_pipe = ref_pipe or pipe
    n_t = pipe.scheduler.config.num_train_timesteps
    unet_cfg = pipe.unet.config
    g = torch.Generator().manual_seed(seed)
    P, R, T = [], [], []
    for f in t_fracs:
        P += list(prompts)
        R += list(ref_prompts)
        T += [int(round(f * (n_t - 1)))] * len(prompts)
    lat = torch.randn((len(P), unet_cfg.in_channels, unet_cfg.sample_size, unet_cfg.sample_size), generator=g)
    lat = lat.to(dev, dtype=pipe.unet.dtype)
    ts = torch.tensor(T, device=dev, dtype=torch.long)
    a = _x0_predictions(pipe, P, lat, ts)
    b = _x0_predictions(ref_pipe, R, lat.to(ref_pipe._execution_device), ts.to(ref_pipe._execution_device))
    diff = (a - b).permute(0, 2, 3, 1).numpy() * 127.5
    return [d.astype(np.float32) for d in diff]
