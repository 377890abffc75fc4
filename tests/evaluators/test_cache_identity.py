"""Feature-cache invalidation: ``avssl.evaluators.cache.code_identity`` hashes the sources that
turn a clip into features (``avssl/data``, ``avssl/models``, ``evaluators/features.py``,
``evaluators/_extract.py``), so a change there extracts features afresh, while other edits and
the checkout's location do not."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

import avssl

PACKAGE = Path(avssl.__file__).resolve().parent


def _copy(dst: Path) -> Path:
    """A copy of the avssl package's source files (no bytecode) under ``dst``."""
    shutil.copytree(PACKAGE, dst / "avssl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst / "avssl"


def identity(pkg: Path) -> str:
    """``code_identity()`` of the package at ``pkg``: its own copy of ``evaluators/cache.py``,
    loaded from there (the function hashes the package its module file sits in)."""
    name = f"_cache_copy_{abs(hash(pkg))}"
    spec = importlib.util.spec_from_file_location(name, pkg / "evaluators" / "cache.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        return module.code_identity()
    finally:
        del sys.modules[name]


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return _copy(tmp_path / "a")


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# a local edit\n")


def test_the_real_function_hashes_its_own_package(monkeypatch, pkg):
    """``avssl.evaluators.cache.code_identity`` itself, pointed at the copy: equal to the
    copy's own, and different once a data module of the copy changes."""
    from avssl.evaluators import cache

    monkeypatch.setattr(cache, "__file__", str(pkg / "evaluators" / "cache.py"))
    cache.code_identity.cache_clear()
    try:
        before = cache.code_identity()
        assert before == identity(pkg)
        _edit(pkg / "data" / "fbank.py")
        cache.code_identity.cache_clear()
        after = cache.code_identity()
        assert after != before and after == identity(pkg)
    finally:
        cache.code_identity.cache_clear()  # the next call hashes the real package again


def test_same_code_same_identity_wherever_it_lives(pkg, tmp_path):
    first = identity(pkg)
    assert len(first) == 64 and int(first, 16) >= 0  # a sha256 hex digest
    assert identity(pkg) == first
    moved = shutil.copytree(pkg, tmp_path / "elsewhere" / "deeper" / "avssl")
    assert identity(moved) == first


@pytest.mark.parametrize(
    "member",
    [
        "data/fbank.py",
        "data/decode.py",
        "models/vit.py",
        "evaluators/features.py",
        "evaluators/_extract.py",  # the extraction loop (run_encoders, _encode)
    ],
)
def test_an_edit_of_feature_code_changes_the_identity(pkg, member):
    before = identity(pkg)
    _edit(pkg / member)
    assert identity(pkg) != before


def test_a_new_or_renamed_module_under_data_or_models_changes_the_identity(pkg):
    before = identity(pkg)
    (pkg / "models" / "extra.py").write_text("X = 1\n")
    added = identity(pkg)
    assert added != before
    (pkg / "models" / "extra.py").rename(pkg / "models" / "extra2.py")  # same bytes, new name
    assert identity(pkg) not in (before, added)
    (pkg / "models" / "extra2.py").unlink()
    assert identity(pkg) == before
    (pkg / "data" / "sub").mkdir()
    (pkg / "data" / "sub" / "deep.py").write_text("")  # folders below data/ count too
    assert identity(pkg) != before


@pytest.mark.parametrize(
    "member", ["train.py", "evaluators/knn.py", "objectives/base.py", "cli.py"]
)
def test_edits_outside_the_feature_code_keep_the_identity(pkg, member):
    before = identity(pkg)
    _edit(pkg / member)
    (pkg / "data" / "NOTES.txt").write_text("not python source\n")
    (pkg / "data" / "__pycache__").mkdir(exist_ok=True)
    (pkg / "data" / "__pycache__" / "fbank.cpython-311.pyc").write_bytes(b"\0bytecode")
    assert identity(pkg) == before
