"""Load what an auditor receives: a diffusers pipeline folder, a single-file checkpoint, and LoRA
weights in diffusers, kohya (sd-scripts / A1111) or peft layout, on the device and dtype asked for.

The product's only door to real Stable Diffusion weights: the CPU test world (the repository's
``testworld/``, a distribution of its own) uses it too, never the other way round. diffusers' own converters do the key mapping; a LoRA whose
tensors do not all land in the model is a one-line error naming what did not match.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path

#: File name of diffusers-format LoRA weights (what ``save_lora_weights`` writes).
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: File names of a peft adapter folder (``PeftModel.save_pretrained``).
PEFT_WEIGHT_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DTYPES = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | None = "auto") -> str:
    """``auto``: CUDA when available, else the CPU; ``cpu`` / ``cuda`` / ``cuda:N`` as given."""
    import torch

    from tracemark.errors import TracemarkError

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TracemarkError(f"device {device}: CUDA is not available here", params=("device",))
    if device != "cpu" and not device.startswith("cuda"):
        raise TracemarkError(f"device must be auto, cpu or cuda[:N], got {device!r}", params=("device",))
    return device


def resolve_dtype(dtype: str | None, device: str):
    """``auto``: fp16 on CUDA (what SD users run), fp32 on the CPU; or fp32 / fp16 / bf16."""
    import torch

    from tracemark.errors import TracemarkError

    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise TracemarkError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", params=("dtype",))
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


class _quiet:
    """Silence diffusers/transformers info logs and progress bars inside a ``with`` block
    (``errors=False``: their error logs too, for failures that are reported as one line)."""

    def __init__(self, *loggers, errors: bool = True):
        self.loggers = loggers
        self.errors = errors

    def __enter__(self):
        import logging

        self.saved = [(lg, lg.get_verbosity()) for lg in self.loggers]
        for lg in self.loggers:
            lg.set_verbosity(logging.ERROR if self.errors else logging.CRITICAL + 1)
            lg.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        for lg, level in self.saved:
            lg.set_verbosity(level)
            lg.enable_progress_bar()
        return False


def is_pipeline_dir(path) -> bool:
    p = Path(path)
    return (p / "model_index.json").is_file() and (p / "unet").is_dir()


def load_pipeline(model_dir, lora=None, device=None, dtype=None, config=None):
    """Load a pipeline folder (tiny or a real SD 1.x) offline, optionally with LoRA weights.

    ``model_dir``: a diffusers pipeline folder, or an original-layout (CompVis / A1111) single-file
    checkpoint (``.safetensors`` / ``.ckpt``, read by diffusers' ``from_single_file``). Offline a
    single file needs ``config``: a pipeline folder of the same architecture (for SD 1.5, an SD 1.5
    diffusers folder) whose component configs, scheduler and tokenizer are used; the UNet, VAE and
    text encoder weights all come from the file. ``lora``: see :func:`load_lora`. ``device``: None
    (leave on the CPU), ``auto``, ``cpu``, ``cuda``; ``dtype``: a torch dtype or ``auto`` / ``fp32``
    / ``fp16`` / ``bf16``. Raises :class:`TracemarkError` for a missing folder, a folder that is not
    a pipeline, a checkpoint that does not fit ``config``, or LoRA weights that do not fit the model.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    from tracemark.errors import TracemarkError

    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise TracemarkError(f"{model_dir}: model folder not found")
    single = model_dir.is_file() and model_dir.suffix in SINGLE_FILE_SUFFIXES
    if not single and not is_pipeline_dir(model_dir):
        raise TracemarkError(f"{model_dir}: not a diffusers pipeline folder (no model_index.json / unet/) "
                             "nor a single-file checkpoint (.safetensors / .ckpt)")
    from transformers.utils import logging as tlogging

    if device is not None:
        device = resolve_device(device)
    if isinstance(dtype, str) or (dtype is None and device is not None):
        dtype = resolve_dtype(dtype, device or "cpu")
    _check_cpu_half(device, dtype)
    if not single:
        _check_pipeline_files(model_dir)
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with _quiet(dlogging, tlogging):
            if single:
                pipe = _load_single_file(StableDiffusionPipeline, model_dir, config, kwargs)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(model_dir, **kwargs)
    except TracemarkError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, OverflowError,
            pickle.UnpicklingError, _safetensor_error()) as exc:
        culprit = _bad_weight_file(model_dir) if not single else None
        if culprit is not None:
            raise TracemarkError(culprit) from exc
        if isinstance(exc, pickle.UnpicklingError):
            raise TracemarkError(f"{model_dir}: {_PICKLE_REFUSED}") from exc
        raise TracemarkError(f"{model_dir}: cannot load pipeline ({_one_line(exc)})") from exc
    _check_tokenizer(pipe, config if single else model_dir)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        load_lora(pipe, lora)
    if device is not None:
        # diffusers warns that fp16 "cannot run" on the CPU; with PyTorch's CPU half kernels it does
        # (checked in _check_cpu_half before loading), so the warning would only mislead.
        pipe.to(device, silence_dtype_warnings=True)
    return pipe


#: The components an audit runs; each must be in the pipeline folder with its files.
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_PICKLE_REFUSED = ("pickled weights that hold more than tensors; refused (unpickling them could run code "
                   "from the file): convert them to .safetensors")


def _safetensor_error():
    from safetensors import SafetensorError

    return SafetensorError


def _check_pipeline_files(model_dir: Path) -> None:
    """What diffusers would otherwise report as a traceback, or not at all, named in one line: a
    component folder that is missing (a pipeline without its tokenizer loads a placeholder one and
    fails at the first prompt), a tokenizer folder without its files, a truncated or damaged
    ``.safetensors`` file (its header is read, not its tensors)."""
    from safetensors import SafetensorError, safe_open

    from tracemark.errors import TracemarkError

    index_path = model_dir / "model_index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TracemarkError(f"{index_path}: not a readable pipeline index ({_one_line(exc, 120)})") from None
    if not isinstance(index, dict):
        raise TracemarkError(f"{index_path}: not a pipeline index (a JSON object expected)")
    for part in PIPELINE_PARTS:
        spec = index.get(part)
        folder = model_dir / part
        if not (isinstance(spec, list) and len(spec) == 2 and spec[1]):
            raise TracemarkError(f"{index_path}: names no {part} (an SD pipeline has unet, vae, text_encoder, "
                                 "tokenizer and scheduler)")
        if not folder.is_dir():
            raise TracemarkError(f"{folder}: missing (model_index.json names a {spec[1]} here)")
    tok = model_dir / "tokenizer"
    if not ((tok / "tokenizer.json").is_file() or ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file())):
        raise TracemarkError(f"{tok}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    for part in ("unet", "vae", "text_encoder"):
        for f in sorted((model_dir / part).glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError, ValueError) as exc:
                raise TracemarkError(f"{f}: damaged or truncated weights file ({_one_line(exc, 120)})") from None


def _bad_weight_file(model_dir: Path) -> str | None:
    """After a failed load: the first weights file of the pipeline that cannot be read on its own, as a
    one-line message naming it (None when each reads: the failure lies elsewhere)."""
    import torch
    from safetensors import SafetensorError, safe_open

    for part in ("unet", "vae", "text_encoder"):
        for f in sorted((model_dir / part).iterdir()) if (model_dir / part).is_dir() else []:
            try:
                if f.suffix == ".safetensors":
                    with safe_open(str(f), framework="pt") as handle:
                        handle.keys()
                elif f.suffix in (".bin", ".pt", ".pth", ".ckpt"):
                    torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                return f"{f}: {_PICKLE_REFUSED}"
            except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as exc:
                return f"{f}: damaged or truncated weights file ({_one_line(exc, 120)})"
    return None


def _check_tokenizer(pipe, folder: Path) -> None:
    """A tokenizer loaded without its config has no real length limit (transformers' placeholder is
    ~1e30) and fails at the first prompt with an OverflowError: say so when loading."""
    from tracemark.errors import TracemarkError

    tok = getattr(pipe, "tokenizer", None)
    limit = getattr(tok, "model_max_length", None)
    if tok is None or not isinstance(limit, int) or not 0 < limit <= 100_000:
        raise TracemarkError(f"{Path(folder) / 'tokenizer'}: no usable tokenizer (model_max_length "
                             f"{limit!r}; tokenizer_config.json should give the text encoder's, 77 for SD)")


def save_pipeline(pipe, out_dir, extra_files: dict[str, str] | None = None) -> Path:
    """``pipe.save_pretrained`` (safetensors) into ``out_dir``, component by component.

    Everything is written to a temporary sibling first; then each component folder and file is
    swapped in with a rename, so an interrupted save never leaves a half-written component.
    Entries of ``out_dir`` that are not part of the pipeline (e.g. ``checkpoints/``) are kept.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        with _quiet(dlogging, tlogging):
            pipe.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if getattr(pipe, "tokenizer", None) is not None:
            write_slow_tokenizer_files(pipe.tokenizer, tmp / "tokenizer")
        entries = sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json")  # index last
        for entry in entries:
            dest = out / entry.name
            if dest.is_dir() and not dest.is_symlink():
                old = out / f".{entry.name}.old-{os.getpid()}"
                os.replace(dest, old)
                os.replace(entry, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(entry, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_slow_tokenizer_files(tok, folder: Path) -> None:
    """``vocab.json`` + ``merges.txt`` beside ``tokenizer.json``, as SD's repositories have them.

    transformers 5 saves only ``tokenizer.json``; older transformers, other tools and the
    diffusers training scripts of their time read the two BPE files.
    """
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _check_cpu_half(device: str | None, dtype) -> None:
    """fp16 on the CPU runs where this PyTorch has CPU half-precision kernels (2.x does); where it
    has not, say so in one line now rather than fail inside the sampler."""
    import torch

    from tracemark.errors import TracemarkError

    if device != "cpu" or dtype != torch.float16:
        return
    try:
        x = torch.ones(1, 2, 4, 4, dtype=torch.float16)
        torch.nn.functional.group_norm(torch.nn.functional.conv2d(x, torch.ones(2, 2, 3, 3, dtype=torch.float16)), 1)
    except RuntimeError as exc:
        raise TracemarkError(f"dtype fp16 on the CPU: this PyTorch has no CPU float16 kernels "
                             f"({_one_line(exc, 120)}); use dtype fp32 or bf16, or device cuda",
                             params=("dtype", "device")) from None


#: Where an original-layout (CompVis / A1111, "LDM") SD checkpoint keeps each component.
LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer.text_model."}


def _load_single_file(cls, path: Path, config, kwargs: dict):
    """``cls.from_single_file`` offline: the component configs, scheduler and tokenizer come from the
    pipeline folder ``config``; the UNet, VAE and text encoder weights from the file (diffusers'
    converter). A file lacking one of the three is refused, not completed from the folder: an audit
    must run the suspect's own weights."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    from tracemark.errors import TracemarkError

    if config is None:
        raise TracemarkError(f"{path}: a single-file checkpoint needs config (a pipeline folder "
                             "of the same architecture, e.g. SD 1.5's) when nothing can be downloaded",
                             params=("config",))
    if not is_pipeline_dir(config):
        raise TracemarkError(f"{config}: config must be a diffusers pipeline folder (model_index.json, unet/, "
                             "vae/, text_encoder/, tokenizer/, scheduler/) of the checkpoint's architecture",
                             params=("config",))
    keys = _checkpoint_keys(path)
    if keys is not None and not any(k.startswith(LDM_PREFIXES["unet"]) for k in keys):
        raise TracemarkError(f"{path}: not an original-layout (CompVis / A1111) Stable Diffusion checkpoint "
                             f"(no {LDM_PREFIXES['unet']}* weights)")
    try:
        pipe = cls.from_single_file(str(path), config=str(config), **kwargs)
    except SingleFileComponentError as exc:
        what = str(exc).split(".")[0].removeprefix("Failed to load ")
        raise TracemarkError(f"{path}: no {what} weights in this checkpoint (an original-layout SD file has "
                             "model.diffusion_model.*, first_stage_model.* and cond_stage_model.transformer.*)"
                             ) from exc
    except (ValueError, KeyError, RuntimeError) as exc:  # shapes or keys that do not match the config
        text = str(exc)
        if "meta tensor" in text:  # parameters the file has no tensor for, left on the meta device
            why = "the config's components have weights this checkpoint lacks"
        else:
            why = _one_line(text.split(". If you want")[0], 200)
        raise TracemarkError(f"{path}: does not fit config {config} ({why})", params=("config",)) from exc
    _check_single_file(pipe, path, config, keys)
    return pipe


def _checkpoint_keys(path: Path) -> list[str] | None:
    """Tensor names of a ``.safetensors`` file (its header only); None for a pickled ``.ckpt``."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError):
        return None  # from_single_file says why it cannot read it


def _check_single_file(pipe, path: Path, config, keys: list[str] | None) -> None:
    """Every component's weights came from the file, all of them: diffusers' converter silently skips
    checkpoint tensors the config has no place for (a deeper VAE or text encoder, attention the
    config lacks) and can leave parameters the file lacks uninitialised."""
    from tracemark.errors import TracemarkError

    for part, prefix in LDM_PREFIXES.items():
        model = getattr(pipe, part)
        state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        empty = [k for k, v in state.items() if v.device.type == "meta"]
        if empty:
            raise TracemarkError(f"{path}: does not fit config {config} (its {part} has no weights for {empty[0]} "
                                 f"and {len(empty) - 1} more)", params=("config",))
        if keys is None:  # a pickled .ckpt: its keys are not readable without loading it again
            continue
        n_file = sum(1 for k in keys if k.startswith(prefix) and not k.endswith("position_ids")
                     and not k.startswith("first_stage_model.loss."))
        if n_file and n_file != len(state):
            raise TracemarkError(f"{path}: does not fit config {config} (its {part} has {n_file} tensors, the "
                                 f"config's {len(state)})", params=("config",))


def lora_state_dict(lora) -> tuple[dict, str, Path]:
    """Read LoRA weights and say their layout: ``(state dict, "diffusers" | "kohya" | "peft", file)``.

    ``lora``: a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``
    (diffusers) or ``adapter_model.safetensors`` + ``adapter_config.json`` (peft), or a folder
    with a single ``.safetensors`` file. A peft adapter is converted to diffusers keys with its
    ``lora_alpha / r`` scale folded into ``lora_B`` (exact for plain LoRA; DoRA and rsLoRA are refused).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from tracemark.errors import TracemarkError

    lora = Path(lora)
    if lora.is_dir():
        for name in (LORA_WEIGHT_NAME, PEFT_WEIGHT_NAME):
            if (lora / name).is_file():
                path = lora / name
                break
        else:
            found = sorted(lora.glob("*.safetensors"))
            if len(found) != 1:
                raise TracemarkError(f"{lora}: no {LORA_WEIGHT_NAME}, {PEFT_WEIGHT_NAME} or single .safetensors file "
                                     "in this folder")
            path = found[0]
    elif lora.is_file():
        path = lora
    else:
        raise TracemarkError(f"{lora}: LoRA weights not found")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise TracemarkError(f"{path}: not readable LoRA weights ({_one_line(exc)})") from None
    keys = list(sd)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_")) for k in keys):
        return sd, "kohya", path
    if any(k.startswith("base_model.model.") for k in keys):
        cfg_path = path.parent / PEFT_CONFIG_NAME
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        if cfg.get("use_dora") or cfg.get("use_rslora"):
            raise TracemarkError(f"{path}: DoRA / rsLoRA peft adapters are not supported")
        r = cfg.get("r")
        scale = float(cfg.get("lora_alpha", r or 1)) / float(r or cfg.get("lora_alpha", 1) or 1)
        out = {}
        for k, v in sd.items():
            nk = "unet." + k[len("base_model.model."):].replace(".default.", ".")
            out[nk] = v * scale if ".lora_B." in nk else v
        return out, "peft", path
    return sd, "diffusers", path


def _n_down(keys) -> int:
    """Number of LoRA down (A) matrices in a state dict of any layout."""
    return sum(1 for k in keys if k.endswith(("lora_A.weight", "lora_down.weight", "lora.down.weight")))


def load_lora(pipe, lora) -> str:
    """Load LoRA weights of any common layout into ``pipe``; returns the layout found.

    Every LoRA matrix of the file must land in the model: a LoRA made for another model can match
    a subset of module names and would otherwise load silently with the rest dropped."""
    import warnings

    from tracemark.errors import TracemarkError

    sd, layout, path = lora_state_dict(lora)

    def adapters(model) -> set[str]:
        return set(getattr(model, "peft_config", None) or {})

    parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    before = {p: adapters(m) for p, m in parts.items()}
    try:
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        with warnings.catch_warnings(), _quiet(dlogging, tlogging, errors=False):  # diffusers logs every mismatch
            warnings.simplefilter("ignore", RuntimeWarning)  # partial matches are checked below
            if layout == "diffusers":  # from the file, so its adapter metadata (lora_alpha) is honoured
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, local_files_only=True)
            else:  # diffusers converts kohya keys (and their .alpha) itself; peft arrives converted
                pipe.load_lora_weights(dict(sd))
    except Exception as exc:  # diffusers/peft raise many kinds for a mismatched LoRA
        raise TracemarkError(f"{path}: LoRA weights ({layout} layout) do not fit this model ({_lora_mismatch(exc)})"
                             ) from None
    got = 0
    for part, model in parts.items():
        new = adapters(model) - before[part]
        got += sum(1 for n, _ in model.named_parameters() if any(n.endswith(f"lora_A.{a}.weight") for a in new))
    expected = _n_down(sd)
    if expected == 0 or got != expected:
        raise TracemarkError(f"{path}: LoRA weights ({layout} layout) do not fit this model ({got} of {expected} "
                             "LoRA matrices matched)")
    return layout


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^\]]*\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")


def _lora_mismatch(exc: BaseException) -> str:
    """The first layer whose shape differs and how many do (torch lists every one, ~100 lines for SD),
    else the error in one line."""
    text = str(exc)
    found = _SIZE_MISMATCH.findall(text)
    if not found:
        return _one_line(exc)
    name, got, want = found[0]
    name = re.sub(r"\.(lora_[AB]|lora_down|lora_up)\.[^.]+\.weight$", r".\1.weight", name)  # drop the adapter name
    more = f"; {len(found) - 1} more layer(s) differ" if len(found) > 1 else ""
    return f"first mismatched layer {name}: {got} in the file, {want} in the model{more}; a LoRA for another base model?"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


