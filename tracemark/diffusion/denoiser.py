"""White-box audit: read the mark from the suspect's denoiser at the owner's own samples.

When the suspect's weights are in hand (a LoRA published on a model site, a checkpoint), there is
no need to hope that sampling reproduces a faint mark. A model fine-tuned on a copy has *fitted
its training points*: near a marked sample's latent, its clean-image prediction
``E[x0 | x_t, c]`` is pulled towards the marked version it saw, ``x + delta_k``, and away from the
original ``x``. So, for every sample a copy marked:

1. take the owner's **original** image ``x`` (never the marked one: the input must not contain any
   key's pattern, or the null breaks) and the caption the copy used (with its trigger word);
2. noise its latent to a few timesteps with seeded noise and ask the suspect's denoiser for its
   clean-image prediction;
3. subtract the **reference** denoiser's prediction at the *same* noisy input and prompt (the
   public base; for a LoRA simply the same pipeline with the LoRA disabled), or, without a
   reference, the original image itself;
4. average over noise draws and timesteps, decode to pixels: one *residual image* per sample.

What the suspect learned beyond the base sits in these residuals: for the guilty copy that
includes its key's pattern ``delta_k``. The residuals are then scored exactly like images, by the
copy's own scheme against its key, with decoy keys and Holm over copies
(:func:`tracemark.detection.scoring.score_copies`). The key enters only the scoring, never the residuals, so
for a copy the model was not trained on the statistic is the scheme's null (checked empirically
on innocent models: docs/learnability.md).

No image is generated: the cost is a few denoiser calls per marked sample, so the test runs on
every marked sample of every copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

#: Noise levels probed (fraction of the training schedule) and noise draws per level.
DEFAULT_T_FRACS: tuple[float, ...] = (0.3, 0.5, 0.7)
DEFAULT_DRAWS = 2


@dataclass(frozen=True)
class Probe:
    """One query: the owner's original image and the prompt the copy trained it with."""

    image: np.ndarray  # H x W x 3, 0..255
    prompt: str
    #: the same caption without the trigger word (trigger copies): with ``contrast``, the residual is
    #: what the trigger word changes, so what the fine-tune changed for every prompt cancels
    plain: str | None = None


def _model_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


def _to_tensor(images: Sequence[np.ndarray], size: int):
    """Images -> [-1, 1] tensor at the model's resolution (resize shorter side, centre crop:
    what the diffusers training scripts do)."""
    import torch

    from tracemark.io.imaging import cover_crop_array

    out = []
    for im in images:
        arr = cover_crop_array(np.asarray(im, dtype=np.float32), size, size)
        out.append(torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1))
    return torch.stack(out)


def _x0(pred, x_t, alpha_bar, prediction_type: str):
    a = alpha_bar.sqrt().view(-1, 1, 1, 1)
    s = (1 - alpha_bar).sqrt().view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return a * x_t - s * pred
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a
    return pred  # "sample"


class _Reference:
    """The reference denoiser: the pipeline itself with its LoRA switched off, another pipeline
    (the public base), or None (residual against the original image)."""

    def __init__(self, pipe, ref_pipe=None, use_lora_off: bool = False) -> None:
        self.pipe, self.ref_pipe, self.lora_off = pipe, ref_pipe, use_lora_off

    @property
    def available(self) -> bool:
        return self.lora_off or self.ref_pipe is not None

    def run(self, fn):
        if self.lora_off:
            self.pipe.disable_lora()
            try:
                return fn(self.pipe)
            finally:
                self.pipe.enable_lora()
        return fn(self.ref_pipe)


def _noise(seed: int, start: int, n: int, t_val: int, draw: int, like):
    """Seeded noise for probes ``start .. start + n``: it depends on (seed, probe index, level, draw),
    not on the batching, so residuals do not change with the batch size."""
    import torch

    g = [torch.Generator().manual_seed(int(seed * 1_000_003 + (start + i) * 7919 + t_val * 31 + draw))
         for i in range(n)]
    return torch.stack([torch.randn(like.shape[1:], generator=gi) for gi in g]).to(like.device, dtype=like.dtype)


def _reference(pipe, ref_pipe, reference: str) -> _Reference:
    """The reference a ``reference`` mode names (see :func:`denoiser_residuals`), checked."""
    if reference == "auto":
        reference = "lora-off" if has_lora(pipe) else ("base" if ref_pipe is not None else "data")
    if reference == "lora-off" and not has_lora(pipe):
        raise ValueError("reference 'lora-off' needs a pipeline with a LoRA loaded")
    if reference == "base" and ref_pipe is None:
        raise ValueError("reference 'base' needs ref_pipe")
    return _Reference(pipe, ref_pipe if reference == "base" else None, reference == "lora-off")


def has_lora(pipe) -> bool:
    """Whether ``pipe`` carries LoRA adapters (loaded with ``load_lora_weights``)."""
    return any(getattr(m, "peft_config", None) for m in (pipe.unet, getattr(pipe, "text_encoder", None)) if m)


def denoiser_residuals(
    pipe,
    probes: Sequence[Probe],
    *,
    ref_pipe=None,
    reference: str = "auto",
    t_fracs: Sequence[float] = DEFAULT_T_FRACS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    batch_size: int = 32,
    contrast: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """One residual image (H x W x 3, 0..255 units, signed) per probe.

    ``reference``: ``"lora-off"`` (the same pipeline without its LoRA), ``"base"`` (``ref_pipe``),
    ``"data"`` (the original image: no reference model), or ``"auto"`` (lora-off when the pipeline
    has a LoRA, else ``ref_pipe`` when given, else data).

    ``contrast``: for probes with a ``plain`` prompt, the residual is the *trigger contrast*
    ``[S(prompt) - S(plain)] - [R(prompt) - R(plain)]`` at the same noisy input: what the suspect's
    trigger word adds beyond what the reference's does. Fitting a copy's data changes the denoiser
    for every prompt (domain, style); that part cancels, and what a trigger-bound mark added stays.
    Still key-independent (the key enters only the scoring). A research option, **not used by the
    audit**: it found nothing on five fine-tuned models, and on one (UNet + text-encoder LoRA, 10%)
    its statistic named an innocent licensee (z 4.01) that the plain residual does not; its null is
    unchecked (docs/research/learnability_log.md).
    """
    import torch

    ref = _reference(pipe, ref_pipe, reference)
    dev = pipe._execution_device
    size = _model_resolution(pipe)
    sched = pipe.scheduler
    n_t = sched.config.num_train_timesteps
    alphas = sched.alphas_cumprod.to(dev)
    ptype = sched.config.prediction_type
    sf = pipe.vae.config.scaling_factor
    levels = [(int(round(f * (n_t - 1))), d) for f in t_fracs for d in range(draws)]
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(probes), batch_size):
            chunk = probes[start:start + batch_size]
            x = _to_tensor([p.image for p in chunk], size).to(dev, dtype=pipe.vae.dtype)
            z0 = pipe.vae.encode(x).latent_dist.mean * sf
            prompts = [p.prompt for p in chunk]
            sets = [prompts]
            if contrast:
                sets.append([p.plain if p.plain is not None else p.prompt for p in chunk])

            def predict(p, noisy, t, texts):
                emb, _ = p.encode_prompt(texts, dev, 1, False)
                pred = p.unet(noisy.to(p.unet.dtype), t, encoder_hidden_states=emb).sample
                return _x0(pred.float(), noisy.float(), alphas[t].float(), ptype)

            acc_s = [torch.zeros_like(z0, dtype=torch.float32) for _ in sets]
            acc_r = [torch.zeros_like(z0, dtype=torch.float32) for _ in sets]
            for t_val, d in levels:
                eps = _noise(seed, start, len(chunk), t_val, d, z0)
                t = torch.full((len(chunk),), t_val, device=dev, dtype=torch.long)
                noisy = sched.add_noise(z0, eps, t)
                for j, texts in enumerate(sets):
                    acc_s[j] += predict(pipe, noisy, t, texts)
                    if ref.available:
                        acc_r[j] += ref.run(lambda p, texts=texts: predict(p, noisy, t, texts))
            k = float(len(levels))

            def decode(vae, acc):  # each prediction through its own model's decoder, in pixels
                return vae.decode((acc / k / sf).to(vae.dtype)).sample.float().cpu()

            img_s = decode(pipe.vae, acc_s[0])
            if ref.available:
                rvae = (ref.ref_pipe or pipe).vae
                img_r = decode(rvae, acc_r[0])
            else:
                img_r = x.float().cpu()
            if contrast:  # probes without a plain prompt (ambient copies) keep the plain residual
                has = torch.tensor([p.plain is not None for p in chunk]).view(-1, 1, 1, 1)
                c_s = img_s - decode(pipe.vae, acc_s[1])
                c_r = img_r - decode(rvae, acc_r[1]) if ref.available else torch.zeros_like(img_s)
                img_s, img_r = torch.where(has, c_s, img_s), torch.where(has, c_r, img_r)
            diff = ((img_s - img_r) * 127.5).permute(0, 2, 3, 1).cpu().numpy()
            out += [d.astype(np.float32) for d in diff]
            if progress:  # probes done, probes in all
                progress(len(out), len(probes))
    return out


def latent_loss_gradients(
    pipe,
    probes: Sequence[Probe],
    model=None,
    *,
    lora_off: bool = False,
    t_fracs: Sequence[float] = DEFAULT_T_FRACS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """``-d L_M / d z0`` for one model ``M``, one array (probes x latent channels x h x w).

    ``L_M``: ``M``'s training loss (its own target, epsilon or v) at the latent ``z0`` of each
    probe's original image encoded by ``pipe``'s VAE, noised to every level of ``t_fracs`` with the
    seeded draws of :func:`_noise` (the same noisy latents for every model: the comparison is
    paired), summed over levels and draws. ``M`` is ``model`` (another pipeline sharing ``pipe``'s
    latent space, e.g. a shadow), else ``pipe`` itself, with its LoRA switched off when
    ``lora_off``. Kept in latent space (small at any resolution) so that one pass per model serves
    every statistic built from differences of models (:func:`pull_back`)."""
    import torch

    if lora_off and not has_lora(pipe):
        raise ValueError("lora_off needs a pipeline with a LoRA loaded")
    m = model if model is not None else pipe
    dev = pipe._execution_device
    size = _model_resolution(pipe)
    sched = pipe.scheduler
    n_t = sched.config.num_train_timesteps
    sf = pipe.vae.config.scaling_factor
    levels = [(int(round(f * (n_t - 1))), d) for f in t_fracs for d in range(draws)]
    out = []
    if lora_off:
        pipe.disable_lora()
    try:
        for start in range(0, len(probes), batch_size):
            chunk = probes[start:start + batch_size]
            with torch.no_grad():
                x = _to_tensor([p.image for p in chunk], size).to(dev, dtype=pipe.vae.dtype)
                z0 = (pipe.vae.encode(x).latent_dist.mean * sf).float()
                emb = m.encode_prompt([p.prompt for p in chunk], dev, 1, False)[0]
            g_lat = torch.zeros_like(z0)
            for t_val, d in levels:  # one UNet graph at a time (memory at 512 px)
                z = z0.detach().requires_grad_(True)
                eps = _noise(seed, start, len(chunk), t_val, d, z)
                t = torch.full((len(chunk),), t_val, device=dev, dtype=torch.long)
                noisy = sched.add_noise(z, eps, t)
                target = (sched.get_velocity(z, eps, t) if sched.config.prediction_type == "v_prediction"
                          else eps).float()
                pred = m.unet(noisy.to(m.unet.dtype), t, encoder_hidden_states=emb).sample.float()
                g_lat -= torch.autograd.grad(((pred - target) ** 2).sum(), z)[0]
            out.append(g_lat.cpu().numpy())
            if progress:
                progress(min(start + batch_size, len(probes)), len(probes))
    finally:
        if lora_off:
            pipe.enable_lora()
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def pull_back(pipe, probes: Sequence[Probe], latent: np.ndarray, *, batch_size: int = 8) -> list[np.ndarray]:
    """Latent-space gradients (as :func:`latent_loss_gradients` gives, or a difference of them) ->
    pixel-space images ``J_enc^T g`` through ``pipe``'s VAE encoder (H x W x 3, float32)."""
    import torch

    dev = pipe._execution_device
    size = _model_resolution(pipe)
    sf = pipe.vae.config.scaling_factor
    out: list[np.ndarray] = []
    for start in range(0, len(probes), batch_size):
        chunk = probes[start:start + batch_size]
        x = _to_tensor([p.image for p in chunk], size).to(dev, dtype=pipe.vae.dtype).requires_grad_(True)
        z0 = pipe.vae.encode(x).latent_dist.mean * sf
        g = torch.from_numpy(np.ascontiguousarray(latent[start:start + len(chunk)])).to(dev, dtype=z0.dtype)
        (grad,) = torch.autograd.grad(z0, x, grad_outputs=g)
        out += [a.astype(np.float32) for a in grad.float().permute(0, 2, 3, 1).cpu().numpy()]
    return out


def unit_rms(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The images scaled together to unit RMS over all of them (the loss statistic's scale)."""
    rms = float(np.sqrt(np.mean([np.mean(a * a) for a in images]))) if len(images) else 1.0
    return [a / max(rms, 1e-20) for a in images]


def shadow_statistic(pipe, probes: Sequence[Probe], g_s: np.ndarray, g_refs: Sequence[np.ndarray],
                     *, batch_size: int = 8) -> list[np.ndarray]:
    """The loss statistic against references k: ``mean_k unit_rms(J^T (g_s - g_k))`` (each reference's
    share at unit RMS, so a noisier shadow does not dominate), from :func:`latent_loss_gradients`."""
    total = None  # accumulated one reference at a time: memory of two sets of pixel images, any K
    for g in g_refs:
        r = unit_rms(pull_back(pipe, probes, g_s - g, batch_size=batch_size))
        total = r if total is None else [a + b for a, b in zip(total, r)]
    return [a / len(g_refs) for a in total]


def loss_gradients(
    pipe,
    probes: Sequence[Probe],
    *,
    ref_pipe=None,
    reference: str = "auto",
    t_fracs: Sequence[float] = DEFAULT_T_FRACS,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """The paired denoising-loss test, linearised: one "residual image" per probe,
    ``-grad_x [L_S(x) - L_R(x)]`` (H x W x 3, unit RMS over all probes).

    ``L_S``, ``L_R``: the suspect's and the reference's training loss (the pipeline's own target,
    epsilon or v) at the *same* noisy latent of the original image ``x`` and prompt, summed over
    the audit's noise levels and seeded draws, differentiated in pixels through the public VAE
    encoder. A model trained on ``x + delta_k`` has a lower loss there than at ``x``, relative to a
    reference that never saw ``delta_k``; to first order
    ``[L_S(x + delta) - L_S(x)] - [L_R(x + delta) - L_R(x)] = -<residual, delta>``, so a copy's key
    correlates with these images when the suspect fitted that copy's marked samples. Unlike the
    clean-image residual of :func:`denoiser_residuals` this also reads the change of the denoiser's
    *input Jacobian* (a model that fitted ``x + delta`` responds to ``delta``), which in the CPU
    world's fine-tunes carries most of what they keep of a 2% mark
    (docs/research/learnability_log.md). The key never enters, so decoy keys give the null as for the residuals.

    ``reference``: as :func:`denoiser_residuals` (``"lora-off"``, ``"base"`` or ``"auto"``); a
    reference is required, since the suspect's own loss gradient is dominated by the image content.
    """
    ref = _reference(pipe, ref_pipe, reference)
    if not ref.available:
        raise ValueError("the loss-gradient statistic needs a reference model (a LoRA to switch off, or ref_pipe)")
    kw = {"t_fracs": t_fracs, "draws": draws, "seed": seed, "batch_size": batch_size}
    halves = [(lambda d, t, h=h: progress(h * t + d, 2 * t)) if progress else None for h in (0, 1)]
    g_s = latent_loss_gradients(pipe, probes, **kw, progress=halves[0])
    g_r = latent_loss_gradients(pipe, probes, ref.ref_pipe, lora_off=ref.lora_off, **kw, progress=halves[1])
    return shadow_statistic(pipe, probes, g_s, [g_r], batch_size=batch_size)
