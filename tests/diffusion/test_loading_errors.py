"""Issue #27.10-11: a damaged pipeline folder or LoRA is one line naming the file, never a traceback
(the tiny untrained pipeline, broken on purpose)."""

from __future__ import annotations

import shutil

import pytest

from tracemark.errors import TracemarkError

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from tracemark_sim import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny", seed=0)


def _broken(base, tmp_path, damage):
    pipe = tmp_path / "pipe"
    shutil.copytree(base, pipe)
    damage(pipe)
    return pipe


def _load(path):
    from tracemark.diffusion import load_pipeline

    with pytest.raises(TracemarkError) as e:
        load_pipeline(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_pipeline_without_its_tokenizer_is_one_line(base, tmp_path):
    """It loaded a placeholder tokenizer (model_max_length ~1e30) and failed at the first prompt with an
    OverflowError traceback."""
    pipe = _broken(base, tmp_path, lambda p: shutil.rmtree(p / "tokenizer"))
    assert _load(pipe).startswith(f"{pipe / 'tokenizer'}: missing")
    shutil.copytree(base / "tokenizer", pipe / "tokenizer")
    (pipe / "tokenizer" / "tokenizer_config.json").unlink()  # files but no length limit
    assert _load(pipe).startswith(f"{pipe / 'tokenizer'}: no usable tokenizer")


def test_a_truncated_text_encoder_is_one_line_naming_the_file(base, tmp_path):
    def cut(p):
        f = p / "text_encoder" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    pipe = _broken(base, tmp_path, cut)
    assert _load(pipe).startswith(f"{pipe / 'text_encoder' / 'model.safetensors'}: damaged or truncated")


def test_pickled_weights_that_hold_code_are_refused_in_one_line(base, tmp_path):
    """torch refuses to unpickle them (weights_only); that refusal used to arrive as a traceback."""
    import torch
    from safetensors.torch import load_file

    class Code:
        def __reduce__(self):
            return (print, ("this would run",))

    def pickle_it(p):
        f = p / "text_encoder" / "model.safetensors"
        sd = dict(load_file(f), extra=Code())
        f.unlink()
        torch.save(sd, p / "text_encoder" / "pytorch_model.bin")

    pipe = _broken(base, tmp_path, pickle_it)
    msg = _load(pipe)
    assert msg.startswith(f"{pipe / 'text_encoder' / 'pytorch_model.bin'}: pickled weights") and "refused" in msg


def test_more_steps_than_the_scheduler_has_is_one_line(base, tmp_path):
    from tracemark.diffusion import generate, load_pipeline

    pipe = load_pipeline(base)
    limit = pipe.scheduler.config.num_train_timesteps
    with pytest.raises(TracemarkError, match=f"^steps {limit + 1} exceeds the {limit} timesteps"):
        generate(base, ["a red circle"], 1, tmp_path / "g", steps=limit + 1, pipe=pipe)
    assert not (tmp_path / "g").exists()


def test_a_lora_of_the_wrong_shape_is_one_line_naming_the_first_layer(base, tmp_path, capfd):
    """It was one line plus ~115 lines that diffusers logged (every mismatched layer)."""
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from tracemark.diffusion import load_lora, load_pipeline

    pipe = load_pipeline(base)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in get_peft_model_state_dict(pipe.unet).items()})
    # as if made for a model twice as wide: every down matrix has twice the inputs
    save_file({k: torch.cat([v, v], dim=1) if "lora_down" in k else v for k, v in kohya.items()},
              tmp_path / "wide.safetensors")
    capfd.readouterr()
    with pytest.raises(TracemarkError) as e:
        load_lora(load_pipeline(base), tmp_path / "wide.safetensors")
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'wide.safetensors'}: LoRA weights (kohya layout) do not fit")
    assert "first mismatched layer " in msg and ".lora_A.weight:" in msg and "more layer(s) differ" in msg
    assert "\n" not in msg and len(msg) < 400
    out, err = capfd.readouterr()
    assert "size mismatch" not in out + err
