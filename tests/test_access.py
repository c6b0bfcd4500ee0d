"""Local model paths: anyone at a loopback-only server, else only the administrator's folders."""
from __future__ import annotations

import os

import pytest

from patchcore.access import allowed_model_dirs, check_model_access, is_loopback
from patchcore.models import ModelLoadError


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("", False), (None, False), ("192.168.1.5", False), ("::", False)])
def test_loopback_addresses(address, expected):
    assert is_loopback(address) is expected


def test_hub_ids_and_embedded_always_pass_on_a_public_server():
    for name in ("embedded", "openai-community/gpt2", "EleutherAI/pythia-160m"):
        check_model_access(name, "0.0.0.0", dirs=[])


def test_paths_are_free_on_loopback(tmp_path):
    check_model_access(str(tmp_path / "model.gguf"), "127.0.0.1", dirs=[])
    check_model_access("/etc/passwd", "localhost", dirs=[])


def test_public_server_refuses_paths_outside_the_allowed_folders(tmp_path):
    allowed = tmp_path / "models"
    (allowed / "tiny").mkdir(parents=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    check_model_access(str(allowed / "tiny"), "0.0.0.0", dirs=[allowed.resolve()])
    check_model_access(str(allowed / "x.gguf"), "0.0.0.0", dirs=[allowed.resolve()])
    with pytest.raises(ModelLoadError, match="PATCHCORE_MODEL_DIRS") as e:
        check_model_access(str(other), "0.0.0.0", dirs=[allowed.resolve()])
    assert "hub id" in str(e.value)
    # '..' and symlinks cannot step out of an allowed folder
    with pytest.raises(ModelLoadError):
        check_model_access(str(allowed / ".." / "elsewhere"), "0.0.0.0", dirs=[allowed.resolve()])
    (allowed / "link").symlink_to(other)
    with pytest.raises(ModelLoadError):
        check_model_access(str(allowed / "link"), "0.0.0.0", dirs=[allowed.resolve()])
    with pytest.raises(ModelLoadError, match="none are set"):
        check_model_access("/etc/passwd", "", dirs=[])


def test_allowed_dirs_come_from_the_environment(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("PATCHCORE_MODEL_DIRS", f"{a}{os.pathsep}{b}{os.pathsep}")
    assert allowed_model_dirs() == [a.resolve(), b.resolve()]
    with pytest.raises(ModelLoadError, match=str(a.resolve())):
        check_model_access("/etc/passwd", "0.0.0.0")
