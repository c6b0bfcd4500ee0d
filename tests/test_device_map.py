"""Models larger than one device: a device map that splits a model between CPU memory
and disk offload gives the unsplit model's numbers; memory estimates and the refusal.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

from patchcore import run_sweep
from patchcore.bigmodels import check_fits, count_parameters, describe_memory, estimate_memory
from patchcore.errors import ModelLoadError
from patchcore.models import ModelSpec, load_model
from patchcore.backends.nnsight import NNsightBackend
from patchcore.prompts import PromptPair
from tiny import VOCAB, build_hf, embedded_tokenizer

PAIR = PromptPair(clean="Mary and John met, and John thanked",
                  corrupted="Mary and John met, and Mary thanked", answer=" Mary", wrong=" John")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama on disk whose MLPs are wide enough that a memory budget splits it.

    The embedding and unembedding (49152 x 64) dominate a tiny model; with 4096-wide
    MLPs each block weighs ~3 MB, so a 30 MiB CPU budget holds the embedding and the
    first block and sends the rest to disk.
    """
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=4096,
                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128)
    hf = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    path = tmp_path_factory.mktemp("bigmodels") / "tiny-wide-llama"
    hf.save_pretrained(path)
    embedded_tokenizer().save_pretrained(path)
    return path


def test_split_between_memory_and_disk_equals_unsplit(folder, tmp_path):
    whole = load_model(ModelSpec(name=str(folder)))
    assert not getattr(whole.hf, "hf_device_map", None)
    spec = ModelSpec(name=str(folder), device_map="auto", max_memory={"cpu": "30MiB"},
                     offload_folder=str(tmp_path / "offload"))
    split = load_model(spec)
    placed = split.hf.hf_device_map
    assert set(placed.values()) == {"cpu", "disk"}, placed  # really split
    assert placed["model.layers.0"] == "cpu" and placed["model.layers.2"] == "disk"
    assert split.device == torch.device("cpu")
    # what the machine learnt about the whole model (shortcuts, speed) is not taken for the split one
    from patchcore import machine_cache
    assert machine_cache.model_key(whole, "support") != machine_cache.model_key(split, "support")
    for sweep in ("head_pos",):
        ref = run_sweep(whole, PAIR, sweep, "denoise")
        got = run_sweep(split, PAIR, sweep, "denoise")
        assert np.abs(ref.values - ref.corrupted_metric).max() > 1e-3  # patches do something
        np.testing.assert_allclose(got.values, ref.values, atol=1e-4, rtol=0)
    # the nnsight backend drives the same accelerate-placed model
    got = run_sweep(split, PAIR, "attn_pos", "noise", backend=NNsightBackend(split))
    ref = run_sweep(whole, PAIR, "attn_pos", "noise")
    np.testing.assert_allclose(got.values, ref.values, atol=1e-4, rtol=0)


def test_spec_with_a_budget_stays_hashable():
    a = ModelSpec(name="x", device_map="auto", max_memory={"0": "20GiB", "cpu": "60GiB"})
    b = ModelSpec(name="x", device_map="auto", max_memory={"0": "20GiB", "cpu": "60GiB"})
    assert a == b and hash(a) == hash(b)
    assert ModelSpec().device_map is None  # the default still loads onto one device


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3_text"])
def test_parameter_count_from_config_is_exact(family):
    hf = build_hf(family)
    assert count_parameters(hf.config) == sum(p.numel() for p in hf.parameters())


def test_estimate_for_a_known_large_model():
    # Llama-3.1-8B's published shape: 8.03 B parameters
    config = tf.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                            tie_word_embeddings=False)
    est = describe_memory(config, "bf16")
    assert 8.02e9 < est.n_params < 8.04e9
    assert est.weights == 2 * est.n_params
    assert estimate_memory(config, "fp32") > 4 * est.n_params  # weights + working memory
    assert describe_memory(config, "fp32").weights == 2 * est.weights


def test_refusal_names_the_options():
    config = tf.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                            num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
    gb = 2**30
    msg = check_fits(config, "fp32", "cpu", available=24 * gb, name="meta-llama/Llama-3.1-8B")
    assert msg is not None and "meta-llama/Llama-3.1-8B" in msg
    assert "bf16" in msg and "which fits" in msg and "device map" in msg and "NDIF" in msg
    assert check_fits(config, "bf16", "cpu", available=24 * gb) is None
    # with a device map, disk counts too (the working memory must still fit in memory)
    assert check_fits(config, "fp32", "cpu", device_map="auto",
                      available={"cpu": 8 * gb, "disk": 100 * gb}) is None
    msg = check_fits(config, "fp32", "cpu", device_map="auto", available={"cpu": 8 * gb, "disk": gb})
    assert msg is not None and "device map (" not in msg and "NDIF" in msg


def test_embedded_model_fits_here():
    assert check_fits("embedded", "fp32") is None


def test_bad_dtype():
    with pytest.raises(ModelLoadError, match="fp32, bf16 or fp16"):
        estimate_memory("embedded", "int3")
