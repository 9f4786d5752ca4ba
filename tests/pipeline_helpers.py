"""A tiny pipeline whose decoder carries one licensee's mark: a suspect with a known answer."""


def suspect_carrying(reg, pipe_dir, licensee: str):
    """(suspect, reference): the suspect's decoder adds ``licensee``'s spread pattern (2/255 RMS) to
    every image it decodes, whatever the prompt; the reference is the same pipeline untouched."""
    import torch

    from tracemark.schemes import get_scheme
    from tracemark.sim.pipeline import load_pipeline

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
