"""The nnsight / NDIF backend.

Equality: every sweep type and direction, run through nnsight's remote="local"
mode (each request is serialised, deserialised with local modules hidden as on
an NDIF server, and executed in-process), equals the plain local run with the
default backend on tiny random models of three families (fp32, <= 1e-4).

Failures: no key, NDIF unreachable, model not served, key refused, job failed,
job timed out. The only stand-ins are at the network/hub boundary: a closed
port, a small HTTP server on 127.0.0.1 playing NDIF, and nnsight's cache of
canonical hub ids.
"""
from __future__ import annotations

import math

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from patchcore import run_sweep
from patchcore.errors import PatchError
from patchcore.models import ModelSpec, load_model
from patchcore.backends.ndif import RemoteError
from patchcore.backends.nnsight import NNsightBackend, make_remote_backend
from patchcore.prompts import PromptPair
from patchcore.sweeps import SWEEPS
from tiny import build_hf, embedded_tokenizer, tiny_model

# 8 tokens: keeps the 36 sweep pairs below a couple of minutes on a 2-core CPU
PAIR = PromptPair(clean="Mary and John met, and John thanked",
                  corrupted="Mary and John met, and Mary thanked", answer=" Mary", wrong=" John")
# gpt2: Conv1D, tied embeddings; llama: GQA; gemma3: head_dim != hidden/heads, sliding window
FAMILIES = ["gpt2", "llama", "gemma3_text"]
TOL = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def _assert_same(got, ref):
    assert got.values.shape == ref.values.shape
    np.testing.assert_allclose(got.values, ref.values, atol=TOL, rtol=0)
    assert got.clean_metric == pytest.approx(ref.clean_metric, abs=TOL)
    assert got.corrupted_metric == pytest.approx(ref.corrupted_metric, abs=TOL)


def _has_teeth(ref, direction):
    """Some patch must move the metric off the run it patches into, or equality proves nothing."""
    unpatched = ref.corrupted_metric if direction == "denoise" else ref.clean_metric
    assert np.abs(ref.values - unpatched).max() > 1e-3


@pytest.mark.parametrize("sweep", [s for s, spec in SWEEPS.items() if spec.component.hook != "pattern"])
def test_remote_local_equals_local_run(model, sweep):
    backend = NNsightBackend(model, remote="local")
    for direction in ("denoise", "noise"):
        ref = run_sweep(model, PAIR, sweep, direction)
        _has_teeth(ref, direction)
        got = run_sweep(model, PAIR, sweep, direction, backend=backend)
        assert got.backend == "nnsight" and ref.backend == "local"
        _assert_same(got, ref)
    # each sweep went as two requests: the baseline, and every patch in one session
    assert backend.requests == 4


def test_whole_sweep_is_one_request_even_in_small_engine_batches():
    m = tiny_model("llama")
    ref = run_sweep(m, PAIR, "head_pos", "denoise")
    b = NNsightBackend(m, remote="local", rows_per_trace=40)  # 96 patches: 3 traces, 1 session
    got = run_sweep(m, PAIR, "head_pos", "denoise", backend=b, batch_size=7)
    _assert_same(got, ref)
    assert b.requests == 2
    # without one_request every engine batch is its own request, with the same numbers
    b2 = NNsightBackend(m, remote="local", one_request=False)
    got2 = run_sweep(m, PAIR, "head_pos", "denoise", backend=b2, batch_size=10)
    _assert_same(got2, ref)
    assert b2.requests == 1 + math.ceil((got2.forward_rows - 2) / 10) >= 1 + 2


def test_one_run_call_is_one_request_and_equals_the_hook_backend():
    """A batch handed to run() directly (as the engine does) is one request, with the numbers
    of the local backend, and three numbers a row come back."""
    from patchcore.backends.base import sweep_batch
    from patchcore.backends.hooks import HookBackend
    from patchcore.prompts import prepare_pair

    m = tiny_model("gpt2")
    prep = prepare_pair(m.tokenizer, PAIR)
    ids = torch.tensor([prep.clean_ids, prep.corrupted_ids])
    spec = SWEEPS["layer_pos"]
    cells = spec.cells(m.components.n_layers, prep.n_tokens, m.components.n_heads)
    results = []
    for backend in (HookBackend(m), NNsightBackend(m, remote="local", rows_per_trace=7)):
        with torch.inference_mode():
            _, cache = backend.baseline(ids, spec.component)
            source = [a[0] for a in cache]
            results.append(backend.run(sweep_batch(ids[1], spec.component, cells, source,
                                                   prep.answer_id, prep.wrong_id)))
    assert results[1].shape == (len(cells), 3)
    torch.testing.assert_close(results[1], results[0], atol=TOL, rtol=0)
    assert backend.requests == 2


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "logprob"])
def test_focused_download_gives_the_same_metrics(metric):
    m = tiny_model("gpt2")
    ref = run_sweep(m, PAIR, "attn_pos", "noise", metric=metric)
    b = NNsightBackend(m, remote="local")
    got = run_sweep(m, PAIR, "attn_pos", "noise", metric=metric, backend=b)
    _assert_same(got, ref)


def test_plain_nnsight_backend_equals_local_run():
    m = tiny_model("gpt2")
    ref = run_sweep(m, PAIR, "head", "denoise")
    got = run_sweep(m, PAIR, "head", "denoise", backend=NNsightBackend(m, remote=False))
    _assert_same(got, ref)


def test_make_remote_backend_builds_the_model_from_its_config(tmp_path):
    """The real NDIF path (meta model from config + tokenizer, no weights) run as remote='local'."""
    folder = tmp_path / "tiny-qwen2"
    build_hf("qwen2").save_pretrained(folder)
    embedded_tokenizer().save_pretrained(folder)
    loaded, backend = make_remote_backend(str(folder), remote="local")
    assert backend.name == "nnsight" and "simulated NDIF" in loaded.label
    assert loaded.components.n_layers == 3 and loaded.components.model_type == "qwen2"
    ref = run_sweep(load_model(ModelSpec(name=str(folder))), PAIR, "mlp_pos", "denoise")
    got = run_sweep(loaded, PAIR, "mlp_pos", "denoise", backend=backend)
    _assert_same(got, ref)
    assert backend.requests == 2


# -- failures -------------------------------------------------------------------

@pytest.fixture
def no_key(monkeypatch):
    from nnsight import CONFIG
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)


def test_missing_key_is_refused_before_anything_is_sent(no_key):
    m = tiny_model("gpt2")
    with pytest.raises(RemoteError) as err:
        NNsightBackend(m, remote=True)
    assert "API key" in str(err.value) and "NDIF_API_KEY" in str(err.value)
    assert err.value.field == "api_key" and isinstance(err.value, PatchError)
    with pytest.raises(RemoteError, match="NDIF_API_KEY"):
        make_remote_backend("meta-llama/Llama-3.1-8B")  # refused before the hub is asked


def test_key_from_environment(monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "env-key-123")
    b = NNsightBackend(tiny_model("gpt2"), remote=True)
    assert b.name == "remote" and "env-key-123" not in repr(b)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def remote_model(monkeypatch):
    """A remote=True backend for a tiny model, its hub id pinned (the hub is not reachable here)."""
    import nnsight.modeling.huggingface as hfmod

    m = tiny_model("gpt2")

    def make(host, **kw):
        b = NNsightBackend(m, remote=True, api_key="sk-SECRET-42", host=host, **kw)
        monkeypatch.setitem(hfmod._ID_CACHE, b.nn.repo_id, "org/tiny-gpt2")
        return b
    return m, make


def _baseline_error(m, backend) -> RemoteError:
    ids = torch.tensor([[1, 2, 3], [1, 2, 4]])
    with pytest.raises(RemoteError) as err:
        backend.baseline(ids, SWEEPS["layer_pos"].component)
    assert "sk-SECRET-42" not in str(err.value)
    return err.value


def test_network_down(remote_model):
    m, make = remote_model
    err = _baseline_error(m, make(f"http://127.0.0.1:{_closed_port()}"))
    assert "Could not reach NDIF" in str(err)


class FakeNDIF:
    """NDIF's HTTP surface on 127.0.0.1, answering as told by `mode`."""

    def __init__(self, mode: str, result: bytes = b"", served: list[str] | None = None):
        """served: the models /status lists (default: the tiny one, or another in "not_served")."""
        self.mode, self.keys, self.polls, self.result = mode, [], 0, result
        self.served = served or ["org/other-model" if mode == "not_served" else "org/tiny-gpt2"]
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, code, data):
                body = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/status":
                    return self._json(200, {"deployments": {f"d{i}": {
                        "repo_id": r, "application_state": "RUNNING", "deployment_level": "HOT"}
                        for i, r in enumerate(fake.served)}})
                if self.path.startswith("/response/"):
                    fake.polls += 1
                    if fake.mode == "fail" and fake.polls > 1:
                        return self._json(200, {"id": "job1", "status": "ERROR",
                                                "description": "IndexError: index 99 is out of bounds"})
                    if fake.mode == "complete" and fake.polls > 1:
                        return self._json(200, {"id": "job1", "status": "COMPLETED",
                                                "data": f"{fake.url}/result/job1"})
                    return self._json(200, {"id": "job1", "status": "RUNNING", "description": ""})
                if self.path == "/result/job1":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(fake.result)))
                    self.end_headers()
                    return self.wfile.write(fake.result)
                self._json(404, {"detail": "no such path"})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.keys.append(self.headers.get("ndif-api-key"))
                if fake.mode == "bad_key":
                    return self._json(401, {"detail": "Invalid API key."})
                self._json(200, {"id": "job1", "status": "RECEIVED", "description": ""})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_ndif():
    servers = []

    def start(mode, **kw):
        servers.append(FakeNDIF(mode, **kw))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def test_model_not_served(remote_model, fake_ndif):
    m, make = remote_model
    ndif = fake_ndif("not_served")
    err = _baseline_error(m, make(ndif.url))
    assert "does not serve 'org/tiny-gpt2'" in str(err) and "org/other-model" in str(err)
    assert err.field == "model" and ndif.keys == []  # nothing was submitted


def test_key_refused(remote_model, fake_ndif):
    m, make = remote_model
    ndif = fake_ndif("bad_key")
    err = _baseline_error(m, make(ndif.url))
    assert "refused the API key" in str(err)
    assert ndif.keys == ["sk-SECRET-42"]  # the key travels in the header, and only there


def test_job_failed(remote_model, fake_ndif):
    m, make = remote_model
    seen = []
    ndif = fake_ndif("fail")
    err = _baseline_error(m, make(ndif.url, on_status=lambda state, text: seen.append(state)))
    assert "NDIF job for" in str(err) and "failed" in str(err) and "index 99" in str(err)
    assert "RECEIVED" in seen or "RUNNING" in seen  # progress reached the caller


def test_job_timed_out(remote_model, fake_ndif):
    m, make = remote_model
    seen = []
    ndif = fake_ndif("slow")
    err = _baseline_error(m, make(ndif.url, timeout_s=1.5,
                                  on_status=lambda state, text: seen.append(state)))
    assert "timed out" in str(err)
    assert "RUNNING" in seen and ndif.polls >= 1


def test_completed_job_result_is_downloaded(remote_model, fake_ndif):
    """The client half of a finished job: statuses, download, decompression, the saved values."""
    import io

    import zstandard

    m, make = remote_model
    logits = torch.randn(2, 11)
    acts = [torch.randn(2, 3, 64) for _ in range(m.components.n_layers)]
    buf = io.BytesIO()
    torch.save({"result": (logits, acts)}, buf)
    ndif = fake_ndif("complete", result=zstandard.ZstdCompressor().compress(buf.getvalue()))
    seen = []
    backend = make(ndif.url, on_status=lambda state, text: seen.append(state))
    got_logits, got_acts = backend.baseline(torch.tensor([[1, 2, 3], [1, 2, 4]]), SWEEPS["layer_pos"].component)
    torch.testing.assert_close(got_logits, logits)
    assert len(got_acts) == len(acts) and all(torch.equal(a, b) for a, b in zip(got_acts, acts))
    assert seen[0] == "SENDING" and "RUNNING" in seen and seen[-1] == "COMPLETED"
    assert ndif.keys == ["sk-SECRET-42"] and backend.requests == 1
