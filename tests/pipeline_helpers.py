"""A tiny pipeline whose decoder carries one licensee's mark: a suspect with a known answer."""


def suspect_carrying(reg, pipe_dir, licensee: str):
    """(suspect, reference): the suspect's decoder adds ``licensee``'s spread pattern (2/255 RMS) to
    every image it decodes, whatever the prompt; the reference is the same pipeline untouched."""
    import torch

    from tracemark.marking.schemes import get_scheme
    from tracemark_sim.pipeline import load_pipeline

    copy = next(c for c in reg.copies() if c.licensee == licensee)
    pat = get_scheme("spread").pattern(reg.key_for_copy(copy), 32, 32)  # unit RMS, 32 x 32 x 3
    bump = torch.from_numpy(2.0 * pat / 127.5).permute(2, 0, 1)[None]
    suspect, ref = load_pipeline(pipe_dir), load_pipeline(pipe_dir)
    decode = suspect.vae.decode

    def marked_decode(z, *a, **k):
        out = decode(z, *a, **k)
        if isinstance(out, tuple):  # the pipeline's own call: return_dict=False
            return (out[0] + bump.to(out[0].dtype),) + tuple(out[1:])
        out.sample = out.sample + bump.to(out.sample.dtype)
        return out

    suspect.vae.decode = marked_decode
    return suspect, ref


def memorising_pair(reg, pipe_dir, licensee: str, strength: float = 4.0):
    """(suspect, reference) whose denoisers are *ideal memorisers* of one latent point: the
    reference's of the blank latent, the suspect's of that point moved by the latent image of
    ``licensee``'s spread pattern (``strength``/255 RMS), i.e. a suspect that fitted that copy's
    mark. Each predicts the noise exactly for its own point, ``(z_t - sqrt(a) mu) / sqrt(1 - a)``,
    whatever the prompt; the real VAE and text encoder stay. The paired-loss gradient of the
    suspect then points along the pattern seen through the encoder, a known answer."""
    import types

    import torch

    from tracemark.marking.schemes import get_scheme
    from tracemark_sim.pipeline import load_pipeline

    copy = next(c for c in reg.copies() if c.licensee == licensee)
    pat = get_scheme("spread").pattern(reg.key_for_copy(copy), 32, 32)
    suspect, ref = load_pipeline(pipe_dir), load_pipeline(pipe_dir)
    size = int(suspect.unet.config.sample_size) * int(suspect.vae_scale_factor)
    grey = torch.zeros(1, 3, size, size)
    bump = torch.nn.functional.interpolate(torch.from_numpy(strength * pat / 127.5).permute(2, 0, 1)[None],
                                           size=(size, size), mode="bilinear")
    sf = suspect.vae.config.scaling_factor
    with torch.no_grad():
        d = (suspect.vae.encode(grey + bump).latent_dist.mean - suspect.vae.encode(grey).latent_dist.mean) * sf
    abar = suspect.scheduler.alphas_cumprod

    class Memoriser(torch.nn.Module):
        def __init__(self, mu, config):
            super().__init__()
            self.register_buffer("mu", mu)
            self.config = config

        dtype = torch.float32
        device = torch.device("cpu")

        def forward(self, z, t, encoder_hidden_states=None):
            a = abar.to(z.device)[t].view(-1, 1, 1, 1).to(z.dtype)
            eps = (z - a.sqrt() * self.mu) / (1 - a).sqrt()
            if suspect.scheduler.config.prediction_type == "v_prediction":
                eps = a.sqrt() * eps - (1 - a).sqrt() * self.mu
            return types.SimpleNamespace(sample=eps)

    suspect.unet = Memoriser(d, suspect.unet.config)
    ref.unet = Memoriser(torch.zeros_like(d), ref.unet.config)
    return suspect, ref
