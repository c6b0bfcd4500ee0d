"""Component maps for every family, unsupported architectures, and one-line load errors.

The only thing faked here is the model hub boundary: transformers'
from_pretrained for hub ids, and the hub endpoint the reachability probe
dials (a local socket, open or closed).
"""
from __future__ import annotations

import socket

import httpx2
import pytest
import torch
import transformers as tf
from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

from patchcore import (EMBEDDED, ModelLoadError, ModelSpec, UnsupportedArchitecture, load_model,
                       run_baseline, wrap_model)
from patchcore.models import EMBEDDED_LABEL, pick_device
from tiny import FAMILIES, build_hf

# family -> (n_layers, n_heads, n_kv_heads, d_head, d_model, block path, out-projection type)
EXPECTED = {
    "gpt2": (3, 4, 4, 16, 64, "transformer.h", "Conv1D"),
    "gpt_neox": (3, 4, 4, 16, 64, "gpt_neox.layers", "Linear"),
    "llama": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "mistral": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "qwen2": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "qwen3": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "gemma": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "gemma2": (3, 4, 2, 16, 64, "model.layers", "Linear"),
    "gemma3_text": (3, 4, 2, 24, 64, "model.layers", "Linear"),  # head_dim != hidden / heads
}
SUPPORTED_NAMES = ["GPT-2", "GPT-NeoX", "Llama", "Mistral", "Qwen2", "Qwen3", "Gemma", "Gemma 2", "Gemma 3"]


def one_line(err) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


# -- component maps -------------------------------------------------------------------------

def test_every_family_is_covered():
    assert sorted(EXPECTED) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_component_map(tiny, family, single_thread):
    model = tiny(family)
    c = model.components
    n_layers, n_heads, n_kv, d_head, d_model, blocks_path, out_type = EXPECTED[family]
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_model) == (n_layers, n_heads, n_kv, d_head, d_model)
    assert c.model_type == family
    blocks = model.hf.get_submodule(blocks_path)
    assert len(c.blocks) == len(blocks) and all(a is b for a, b in zip(c.blocks, blocks))
    for layer in range(n_layers):
        assert c.attn[layer] in set(c.blocks[layer].children())
        assert c.mlp[layer] in set(c.blocks[layer].children())
        assert any(m is c.attn_out[layer] for m in c.attn[layer].modules())
        assert type(c.attn_out[layer]).__name__ == out_type
    assert c.unembed is model.hf.get_output_embeddings()
    assert c.vocab_size == model.hf.config.vocab_size

    # shapes seen in a real forward: the out-projection's input holds n_heads * d_head features,
    # attention / MLP / block outputs are d_model wide, the final norm feeds the unembedding
    seen = {}
    hooks = [c.attn_out[0].register_forward_pre_hook(lambda m, a: seen.__setitem__("o_in", a[0].shape)),
             c.attn[0].register_forward_hook(
                 lambda m, a, o: seen.__setitem__("attn", (o if torch.is_tensor(o) else o[0]).shape)),
             c.mlp[-1].register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o.shape)),
             c.final_norm.register_forward_hook(lambda m, a, o: seen.__setitem__("norm", o.shape))]
    try:
        with torch.no_grad():
            model.hf(input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    finally:
        for h in hooks:
            h.remove()
    assert seen["o_in"] == (1, 5, n_heads * d_head)
    assert seen["attn"] == seen["mlp"] == seen["norm"] == (1, 5, d_model)

    facts = model.facts()
    assert facts["layers"] == n_layers and facts["heads"] == n_heads and facts["head size"] == d_head


@pytest.mark.parametrize("config", [
    tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=2, n_head=4),
    tf.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 ffn_dim=64, word_embed_proj_dim=32),
], ids=["bloom", "opt"])
def test_unknown_architecture_lists_supported_families(config, tokenizer):
    hf = tf.AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitecture) as info:
        wrap_model(hf, tokenizer)
    msg = one_line(info.value)
    assert f"'{config.model_type}' is not supported" in msg
    for name in SUPPORTED_NAMES:
        assert name in msg
    assert isinstance(info.value, ModelLoadError)


# -- local folders and files (real loading, no fakes) ------------------------------------------

def test_local_folder_loads_and_matches_in_memory(tmp_path, tokenizer, single_thread):
    hf = build_hf("llama")
    hf.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.label == str(tmp_path)
    assert loaded.components.n_layers == 3 and loaded.dtype == torch.float32
    assert loaded.spec.trust_remote_code is False
    direct = wrap_model(build_hf("llama"), tokenizer)
    a, b = run_baseline(loaded, _short_pair()), run_baseline(direct, _short_pair())
    assert a.clean_metric == pytest.approx(b.clean_metric, abs=1e-5)
    assert a.corrupted_metric == pytest.approx(b.corrupted_metric, abs=1e-5)


def test_local_folder_of_unknown_architecture(tmp_path, tokenizer):
    tf.AutoModelForCausalLM.from_config(
        tf.OPTConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     ffn_dim=64, word_embed_proj_dim=32)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(str(tmp_path))
    assert "'opt' is not supported" in one_line(info.value) and "Llama" in str(info.value)


def test_unreadable_gguf_file(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"\x00garbage, not a GGUF file\xff" * 50)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(bad))
    msg = one_line(info.value)
    assert msg.startswith(f"Could not read the model at '{bad}'")
    assert ".gguf file" in msg and ".." not in msg


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path / "nowhere.gguf"))
    assert one_line(info.value) == f"No GGUF file at '{tmp_path / 'nowhere.gguf'}'. Check the path."


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path / "no-such-folder"))
    msg = one_line(info.value)
    assert msg.startswith(f"No model folder at '{tmp_path / 'no-such-folder'}'")


def test_folder_without_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(tmp_path))
    msg = one_line(info.value)
    assert msg.startswith(f"Could not read the model at '{tmp_path}'")


def test_a_file_that_is_not_a_model(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\x01\x02garbage")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(f))
    msg = one_line(info.value)
    assert "is a file, not a model folder" in msg and "hub" not in msg


def test_blank_name_means_the_embedded_model():
    assert load_model(ModelSpec(name="   ")).label == EMBEDDED_LABEL


# -- dtype / device validation ------------------------------------------------------------------

def test_unknown_dtype():
    with pytest.raises(ModelLoadError) as info:
        load_model(EMBEDDED, dtype="fp64")
    assert one_line(info.value) == "Unknown dtype 'fp64'. Choose one of fp32, bf16, fp16."


def test_unknown_device():
    with pytest.raises(ModelLoadError) as info:
        load_model(EMBEDDED, device="tpu")
    assert "Unknown device 'tpu'" in one_line(info.value)


def test_device_choice_follows_the_machine():
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda" and pick_device("cuda").type == "cuda"
    else:
        with pytest.raises(ModelLoadError) as info:
            load_model(EMBEDDED, device="cuda")
        assert "No CUDA GPU" in one_line(info.value) and "'cpu'" in str(info.value)
        mps = getattr(torch.backends, "mps", None)
        expected = "mps" if mps is not None and mps.is_available() else "cpu"
        assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")


# -- the hub boundary ---------------------------------------------------------------------------

@pytest.fixture
def hub_up(monkeypatch):
    """The reachability probe finds a hub (a local listening socket stands in for it)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    for var in ("HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    server.close()


@pytest.fixture
def hub_down(monkeypatch):
    """The hub endpoint refuses connections (a port nothing listens on)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    for var in ("HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")


class FakeHub:
    """Stands in for from_pretrained on hub ids: records calls, raises or returns what it is told."""

    def __init__(self, monkeypatch, error=None, model_error=None, tokenizer=None, model=None):
        self.calls = []
        self.error, self.model_error = error, model_error
        self.tokenizer, self.model = tokenizer, model
        monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", self._fake("tokenizer"))
        monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", self._fake("model"))

    def _fake(self, kind):
        def from_pretrained(name, *args, **kwargs):
            self.calls.append((kind, name, kwargs))
            if kwargs.get("local_files_only"):  # as transformers does for a file not in the cache
                raise LocalEntryNotFoundError(f"{name} is not in the local cache")
            err = self.model_error if kind == "model" and self.model_error else self.error
            if err is not None:
                raise err
            return self.tokenizer if kind == "tokenizer" else self.model
        return from_pretrained

    def kwargs(self, kind):
        return [kw for k, _, kw in self.calls if k == kind and not kw.get("local_files_only")]


def _http_error(cls, status, message):
    request = httpx2.Request("GET", "https://huggingface.co/api/models/nobody/nothing")
    return cls(message, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("error", [
    _http_error(RepositoryNotFoundError, 404,
                "404 Client Error. (Request ID: abc)\n\nRepository Not Found for url: https://huggingface.co/nobody/nothing."),
    OSError("nobody/nothing is not a local folder and is not a valid model identifier listed on "
            "'https://huggingface.co/models'\nIf this is a private repository, make sure to pass a token"),
], ids=["RepositoryNotFoundError", "transformers-OSError"])
def test_id_that_does_not_exist(monkeypatch, hub_up, error):
    FakeHub(monkeypatch, error=error)
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody/nothing")
    msg = one_line(info.value)
    assert msg.startswith("No model called 'nobody/nothing' could be found on the Hugging Face hub")
    assert "openai-community/gpt2" in msg


@pytest.mark.parametrize("error", [
    OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
            "in the cached files.\nCheck your internet connection or see how to run the library in offline mode"),
    httpx2.ConnectError("[Errno -2] Name or service not known"),
    TimeoutError("The read operation timed out"),
], ids=["transformers-OSError", "ConnectError", "timeout"])
def test_hub_unreachable_while_downloading(monkeypatch, hub_up, error):
    FakeHub(monkeypatch, error=error)
    with pytest.raises(ModelLoadError) as info:
        load_model("openai-community/gpt2")
    msg = one_line(info.value)
    assert "Could not reach the Hugging Face hub" in msg and "'openai-community/gpt2'" in msg
    assert "'embedded'" in msg and "offline" in msg


def test_hub_unreachable_fails_fast_and_names_embedded(hub_down):
    """No fakes for from_pretrained at all: the id is not cached and the hub refuses to connect."""
    import time
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody/not-cached-anywhere-7f3a")
    msg = one_line(info.value)
    assert "Could not reach the Hugging Face hub" in msg and "'embedded'" in msg
    assert time.perf_counter() - t0 < 30  # not minutes of download retries


def test_not_enough_memory(monkeypatch, hub_up, tokenizer):
    FakeHub(monkeypatch, tokenizer=tokenizer, model_error=torch.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(ModelLoadError) as info:
        load_model("Qwen/Qwen2.5-0.5B")
    msg = one_line(info.value)
    assert msg.startswith("Not enough memory to load 'Qwen/Qwen2.5-0.5B'") and "embedded" in msg


def test_custom_code_needs_trust_remote_code(monkeypatch, hub_up):
    FakeHub(monkeypatch, error=ValueError(
        "The repository for someone/custom contains custom code which must be executed to correctly "
        "load the model.\nPlease pass the argument `trust_remote_code=True` to allow custom code to be run."))
    with pytest.raises(ModelLoadError) as info:
        load_model("someone/custom")
    assert "needs custom code" in one_line(info.value) and "trust_remote_code" in str(info.value)


def test_other_errors_stay_one_line(monkeypatch, hub_up):
    FakeHub(monkeypatch, error=RuntimeError("disk quota exceeded\nwhile writing shard 2 of 3"))
    with pytest.raises(ModelLoadError) as info:
        load_model("someone/model")
    assert one_line(info.value) == "Could not load 'someone/model': disk quota exceeded"


def test_trust_remote_code_off_by_default_and_passed_through(monkeypatch, hub_up, tokenizer):
    hub = FakeHub(monkeypatch, tokenizer=tokenizer, model=build_hf("llama"))
    loaded = load_model("someone/tiny-llama")
    assert loaded.label == "someone/tiny-llama" and loaded.components.n_layers == 3
    for kind in ("tokenizer", "model"):
        (kw,) = hub.kwargs(kind)
        assert kw["trust_remote_code"] is False
        assert "revision" not in kw
    assert hub.kwargs("model")[0]["dtype"] == torch.float32

    hub = FakeHub(monkeypatch, tokenizer=tokenizer, model=build_hf("llama"))
    load_model(ModelSpec(name="someone/tiny-llama", trust_remote_code=True, revision="v1.0", dtype="bf16"))
    for kind in ("tokenizer", "model"):
        (kw,) = hub.kwargs(kind)
        assert kw["trust_remote_code"] is True and kw["revision"] == "v1.0"
    assert hub.kwargs("model")[0]["dtype"] == torch.bfloat16
    assert "dtype" not in hub.kwargs("tokenizer")[0]


def test_cached_hub_model_needs_no_network(monkeypatch, hub_down, tokenizer):
    """A hub id already in the local cache loads with the hub unreachable."""
    calls = []

    def cached(kind, obj):
        def from_pretrained(name, *args, **kwargs):
            calls.append((kind, kwargs.get("local_files_only")))
            if not kwargs.get("local_files_only"):
                raise AssertionError("went online although the files are cached")
            return obj
        return from_pretrained
    monkeypatch.setattr(tf.AutoTokenizer, "from_pretrained", cached("tokenizer", tokenizer))
    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", cached("model", build_hf("gpt2")))
    loaded = load_model("openai-community/gpt2")
    assert loaded.components.model_type == "gpt2"
    assert calls == [("tokenizer", True), ("model", True)]


# -- a cached repository with custom code (trust_remote_code) ------------------------------------

def test_cached_repo_that_needs_custom_code_says_so(custom_repo):
    """The files are cached; only trust_remote_code is missing. Not "not in the local cache"."""
    repo_id, marker = custom_repo
    with pytest.raises(ModelLoadError) as info:
        load_model(repo_id)
    msg = one_line(info.value)
    assert msg.startswith(f"'{repo_id}' needs custom code") and "local cache" not in msg
    assert "PATCHCORE_TRUST_REMOTE_CODE" not in msg  # at this machine it is the user's own choice
    with pytest.raises(ModelLoadError) as info:  # served to a network: who can allow it
        load_model(repo_id, served_on="0.0.0.0")
    assert "needs custom code" in info.value.message and "PATCHCORE_TRUST_REMOTE_CODE" in info.value.message
    assert not marker.exists()


def test_public_server_never_runs_remote_code_it_was_not_told_to(custom_repo):
    repo_id, marker = custom_repo
    for address in ("0.0.0.0", "", None, "192.0.2.7"):
        with pytest.raises(ModelLoadError) as info:
            load_model(ModelSpec(repo_id, trust_remote_code=True), served_on=address)
        msg = one_line(info.value)
        assert "served to other machines" in msg and "PATCHCORE_TRUST_REMOTE_CODE" in msg, msg
        assert info.value.field == "trust_remote_code"
    assert not marker.exists()


def test_listed_repository_runs_its_code_on_a_public_server(tmp_path):
    """The operator's list opens it (checked in a fresh process with its own hub cache, as a server
    started with HF_HOME and PATCHCORE_TRUST_REMOTE_CODE would: the code writes the marker)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import patchcore
    from app_helpers import CUSTOM_REPO, custom_code_repo
    marker = tmp_path / "marker"
    custom_code_repo(tmp_path / "hf" / "hub", marker)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "HF_HUB_OFFLINE": "1", "PATCHCORE_TRUST_REMOTE_CODE": f"someone/else,{CUSTOM_REPO}",
           "PYTHONPATH": str(Path(patchcore.__file__).resolve().parents[1])}
    code = ("import sys; from patchcore import ModelSpec, load_model; "
            "m = load_model(ModelSpec(sys.argv[1], trust_remote_code=True), served_on='0.0.0.0'); "
            "print('family', m.components.model_type)")
    out = subprocess.run([sys.executable, "-c", code, CUSTOM_REPO], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "family gpt2" in out.stdout and marker.exists()


def _short_pair():
    from patchcore import PromptPair
    return PromptPair("Mary met John; John thanked", "John met Mary; Mary thanked", " Mary", " John")
