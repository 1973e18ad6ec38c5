"""Strict checkpoint loading (paged_flex.fms.load_llama): a folder whose tensors do not fit its config is
refused before anything is loaded, with the tensor named (FMS's name) and both shapes.

FMS's get_model alone leaves a tensor the checkpoint lacks as uninitialised memory and only logs one it
cannot place: an untied LLaMA without lm_head.weight loaded and answered [17, 17, ...], and a config of 3
layers over the weights of 2 loaded with a third layer of zeros. Each case here is a tiny random LLaMA
(2 layers, hidden 64) with one tensor dropped, added or replaced, or one config.json field changed.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from paged_flex.fms import load_llama, model_kv_shape, save_random_llama


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_random_llama(tmp_path_factory.mktemp("llama"), tokenizer=False)


def altered(folder, new, drop=(), add=None, config=None):
    "A copy of `folder` with tensors dropped, added or replaced, and config.json fields changed."
    shutil.copytree(folder, new)
    tensors = {k: t for k, t in load_file(folder / "model.safetensors").items() if k not in drop}
    save_file({**tensors, **(add or {})}, new / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    (new / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    return new


CASES = {
    "no_head": (dict(drop=["lm_head.weight"]), "head.weight [300, 64] is missing (HF's lm_head.weight)"),
    "three_layers": (
        dict(config={"num_hidden_layers": 3}),
        "num_hidden_layers=3, but the weights hold layers 0, 1",
    ),
    "one_layer": (
        dict(config={"num_hidden_layers": 1}),
        "num_hidden_layers=1, but the weights hold layers 0, 1",
    ),
    "no_down_proj": (
        dict(drop=["model.layers.1.mlp.down_proj.weight"]),
        "base_model.layers.1.ff_sub_layer.w2.weight [64, 176] is missing",
    ),
    "extra": (
        dict(add={"model.layers.0.mlp.bias": torch.zeros(4)}),
        "base_model.layers.0.mlp.bias [4] is not in the model",
    ),
    "mis_shaped": (
        dict(add={"model.embed_tokens.weight": torch.zeros(299, 64)}),
        "base_model.embedding.weight is [299, 64] in the checkpoint, [300, 64] in the model",
    ),
    "config_kv_heads": (
        dict(config={"num_key_value_heads": 4}),
        "qkv_fused.weight is [128, 64] in the checkpoint, [192, 64] in the model",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_misfit_checkpoint_is_refused(folder, tmp_path, case):
    changes, message = CASES[case]
    bad = altered(folder, tmp_path / case, **changes)
    with pytest.raises(ValueError, match="does not fit|num_hidden_layers") as err:
        load_llama(bad, device="cpu")
    assert message in str(err.value)


def test_fitting_checkpoints_load(folder, tmp_path):
    "The untouched folder, a tied head without lm_head.weight, and an old checkpoint's saved RoPE table."
    assert model_kv_shape(load_llama(folder, device="cpu")[0]) == (2, 2, 16)
    tied, _ = load_llama(
        save_random_llama(tmp_path / "tied", tokenizer=False, tie_word_embeddings=True), "cpu"
    )
    assert tied.head.weight is tied.base_model.embedding.weight
    old = altered(
        folder, tmp_path / "old", add={"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}
    )
    load_llama(old, device="cpu")
