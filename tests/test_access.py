"""Local model paths and remote code: anyone at a loopback-only server, else only what the
administrator lists; links name only the embedded model or hub ids."""
from __future__ import annotations

import os

import pytest

from patchcore.access import (REMOTE_CODE_ENV, allowed_model_dirs, allowed_remote_code, check_link_model,
                              check_load, check_model_access, check_remote_code, is_loopback,
                              link_model_problem, remote_code_allowed, remote_code_rule)
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


# -- trust_remote_code: like local paths, only the operator opens it on a public server --------

def test_remote_code_is_the_local_users_choice_on_loopback():
    for address in ("127.0.0.1", "localhost", "::1"):
        assert remote_code_allowed("someone/custom", address, allowed=[])
        check_remote_code("someone/custom", True, address, allowed=[])


def test_public_server_runs_remote_code_only_for_listed_repositories(tmp_path):
    for address in ("0.0.0.0", "", None, "192.168.1.5"):
        with pytest.raises(ModelLoadError, match=REMOTE_CODE_ENV) as e:
            check_remote_code("someone/custom", True, address, allowed=[])
        assert e.value.field == "trust_remote_code" and "No repository is listed" in str(e.value)
        check_remote_code("someone/custom", False, address, allowed=[])  # not asked: nothing to refuse
    check_remote_code("Someone/Custom", True, "0.0.0.0", allowed=["someone/custom"])  # hub ids: any case
    with pytest.raises(ModelLoadError, match="only for: someone/custom"):
        check_remote_code("someone/other", True, "0.0.0.0", allowed=["someone/custom"])
    folder = tmp_path / "model"
    folder.mkdir()
    check_remote_code(str(folder / ".." / "model"), True, "0.0.0.0", allowed=[str(folder)])
    assert not remote_code_allowed(str(tmp_path), "0.0.0.0", allowed=[str(folder)])
    assert not remote_code_allowed("", "0.0.0.0", allowed=[""])


def test_remote_code_list_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(REMOTE_CODE_ENV, " a/b, c/d  e/f" + os.pathsep + "g/h,")
    assert allowed_remote_code() == ["a/b", "c/d", "e/f", "g/h"]
    assert remote_code_allowed("e/f", "0.0.0.0") and not remote_code_allowed("x/y", "0.0.0.0")
    assert "a/b, c/d, e/f, g/h" in remote_code_rule("0.0.0.0")
    monkeypatch.delenv(REMOTE_CODE_ENV)
    assert allowed_remote_code() == []
    assert f"{REMOTE_CODE_ENV}=owner/name" in remote_code_rule("0.0.0.0")


def test_check_load_applies_both_rules(tmp_path):
    with pytest.raises(ModelLoadError, match="PATCHCORE_MODEL_DIRS"):
        check_load(str(tmp_path), False, "0.0.0.0")
    with pytest.raises(ModelLoadError, match=REMOTE_CODE_ENV):
        check_load("someone/custom", True, "0.0.0.0")
    check_load(str(tmp_path), True, "127.0.0.1")


# -- links: the embedded model or a hub id, never something on the server's disk ----------------

def test_a_link_cannot_name_a_folder_of_the_server(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "owner" / "name").mkdir(parents=True)
    for name in ("docs", "owner/name", "/etc", "./x", "~/x", "../x", "a/../b", "x.gguf", "a/b/c", ""):
        assert link_model_problem(name), name
        with pytest.raises(ModelLoadError, match="not a file path") as e:
            check_link_model(name)
        assert e.value.field == "model"
    for name in ("embedded", "openai-community/gpt2", "gpt2", "EleutherAI/pythia-160m", "tests"):
        assert link_model_problem(name) is None, name
        check_link_model(name)
