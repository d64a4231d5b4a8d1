"""Checksums, the verification cache, downloads and safe extraction (no network, no real data)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from datafiles import make_archive, tar_with

from longtail.data import download
from longtail.data.download import (
    CACHE_NAME,
    VerifyCache,
    download_url,
    file_digest,
    safe_extract,
    verify_file,
)
from longtail.errors import ChecksumError, DataError


@pytest.fixture
def count_digests(monkeypatch):
    """Counts calls of download.file_digest (the only place files are hashed)."""
    calls = []
    real = download.file_digest

    def counting(path, algo):
        calls.append(Path(path).name)
        return real(path, algo)

    monkeypatch.setattr(download, "file_digest", counting)
    return calls


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """Keep the read-only fallback cache out of the real home folder."""
    h = tmp_path / "home"
    monkeypatch.setenv("HOME", str(h))
    return h


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# --------------------------------------------------------------------------------------------- digests


@pytest.mark.parametrize("algo", ["md5", "sha1", "sha256"])
def test_file_digest_matches_hashlib_across_chunks(tmp_path, monkeypatch, algo):
    data = os.urandom(10_000)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    monkeypatch.setattr(download, "CHUNK", 1000)  # several chunks, the last one partial after +1 byte
    assert file_digest(p, algo) == hashlib.new(algo, data).hexdigest()
    p.write_bytes(data + b"!")
    assert file_digest(p, algo) == hashlib.new(algo, data + b"!").hexdigest()


def test_file_digest_unknown_algorithm(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match="unknown hash algorithm 'nope'"):
        file_digest(p, "nope")


def test_verify_file_accepts_and_returns_digest(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello")
    assert verify_file(p, "md5", md5(b"hello").upper()) == md5(b"hello")


def test_verify_file_mismatch_names_file_and_leaves_it(tmp_path):
    p = tmp_path / "data_batch_1"
    p.write_bytes(b"modified")
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as ei:
        verify_file(p, "md5", wrong)
    msg = str(ei.value)
    assert str(p) in msg and wrong in msg and md5(b"modified") in msg
    assert "data.verify=false" in msg and "download" in msg
    assert p.read_bytes() == b"modified"  # never deleted


def test_verify_file_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        verify_file(tmp_path / "nope", "md5", "0" * 32)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_skips_rehash_until_file_changes(tmp_path, count_digests):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    assert count_digests == ["f"]
    entry = json.loads((tmp_path / CACHE_NAME).read_text())["f"]
    assert entry["digest"] == md5(b"abc") and entry["algorithm"] == "md5" and entry["size"] == 3
    assert entry["mtime_ns"] == os.stat(p).st_mtime_ns

    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))  # a fresh cache object: read from disk
    assert count_digests == ["f"]

    # same size, new mtime: hashed again (and here the content is wrong)
    p.write_bytes(b"abd")
    os.utime(p, ns=(entry["mtime_ns"] + 10**9, entry["mtime_ns"] + 10**9))
    with pytest.raises(ChecksumError):
        verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    assert count_digests == ["f", "f"]


def test_cache_invalidated_by_size_even_with_same_mtime(tmp_path, count_digests):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    st = os.stat(p)
    p.write_bytes(b"abcd")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ChecksumError):
        verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    assert count_digests == ["f", "f"]


def test_cache_entry_for_other_expected_digest_is_not_trusted(tmp_path, count_digests):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    with pytest.raises(ChecksumError):
        verify_file(p, "md5", md5(b"xyz"), VerifyCache(tmp_path))
    verify_file(p, "sha1", hashlib.sha1(b"abc").hexdigest(), VerifyCache(tmp_path))
    assert count_digests == ["f", "f", "f"]


def test_corrupt_cache_file_is_ignored(tmp_path, count_digests):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    (tmp_path / CACHE_NAME).write_text("{not json")
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    assert count_digests == ["f"]
    assert "f" in json.loads((tmp_path / CACHE_NAME).read_text())


def _refuse_under(folder: Path, real_write):
    """An _atomic_write_text that fails like a read-only file system inside ``folder``."""

    def write(path, text):
        if Path(path).parent == folder:
            raise PermissionError(13, "Read-only file system", str(path))
        real_write(path, text)

    return write


def test_read_only_folder_falls_back_to_home_cache(tmp_path, home, monkeypatch, count_digests):
    data = tmp_path / "ro"
    data.mkdir()
    p = data / "f"
    p.write_bytes(b"abc")
    monkeypatch.setattr(download, "atomic_write_text", _refuse_under(data, download.atomic_write_text))
    verify_file(p, "md5", md5(b"abc"), VerifyCache(data))
    assert not (data / CACHE_NAME).exists()
    fallback = list((home / ".cache" / "longtail" / "verified").glob("*.json"))
    assert len(fallback) == 1
    verify_file(p, "md5", md5(b"abc"), VerifyCache(data))
    assert count_digests == ["f"]


def test_stale_folder_cache_and_newer_fallback_are_merged(tmp_path, home, monkeypatch, count_digests):
    data = tmp_path / "ro"
    data.mkdir()
    (data / "a").write_bytes(b"a")
    (data / "b").write_bytes(b"b")
    verify_file(data / "a", "md5", md5(b"a"), VerifyCache(data))  # cache in the folder knows 'a'
    monkeypatch.setattr(download, "atomic_write_text", _refuse_under(data, download.atomic_write_text))
    verify_file(data / "b", "md5", md5(b"b"), VerifyCache(data))  # folder now read-only: 'b' goes to fallback
    cache = VerifyCache(data)
    verify_file(data / "a", "md5", md5(b"a"), cache)
    verify_file(data / "b", "md5", md5(b"b"), cache)
    assert count_digests == ["a", "b"]


def test_nothing_writable_just_reverifies(tmp_path, monkeypatch, count_digests):
    p = tmp_path / "f"
    p.write_bytes(b"abc")

    def refuse(path, text):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(download, "atomic_write_text", refuse)
    assert VerifyCache(tmp_path).save() is None
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    verify_file(p, "md5", md5(b"abc"), VerifyCache(tmp_path))
    assert count_digests == ["f", "f"]


# -------------------------------------------------------------------------------------------- download


def test_download_without_network_explains_what_to_do(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "data"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as ei:
        download_url(url, root / "cifar-10-python.tar.gz", "md5", "0" * 32, searched=root,
                     layout_hint="cifar-10-batches-py or cifar-10-batches-bin")
    msg = str(ei.value)
    assert url in msg and str(root) in msg
    assert "data.root=" in msg and "LONGTAIL_DATA" in msg and "cifar-10-batches-bin" in msg
    assert list(root.iterdir()) == []  # nothing half-written


def test_download_into_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write to .*file/sub to download http://x/a.zip"):
        download_url("http://x/a.zip", blocker / "sub" / "a.zip", "md5", "0" * 32)


class _BrokenResponse(io.BytesIO):
    headers: dict = {}

    def read(self, n=-1):
        if self.tell() >= 5:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(5)


def test_download_interrupted_midway_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _BrokenResponse(b"0123456789"))
    with pytest.raises(DataError, match="could not download http://example.invalid/a.zip"):
        download_url("http://example.invalid/a.zip", tmp_path / "a.zip", "md5", md5(b"0123456789"))
    assert list(tmp_path.iterdir()) == []


def test_download_file_url_good_checksum(tmp_path):
    src = tmp_path / "served.bin"
    src.write_bytes(b"payload" * 1000)
    dest = tmp_path / "out" / "got.bin"
    got = download_url(src.as_uri(), dest, "sha256", hashlib.sha256(b"payload" * 1000).hexdigest())
    assert got == dest and dest.read_bytes() == b"payload" * 1000
    assert [p.name for p in dest.parent.iterdir()] == ["got.bin"]


def test_download_bad_checksum_is_kept_as_partial_never_used(tmp_path):
    src = tmp_path / "served.bin"
    src.write_bytes(b"tampered")
    dest = tmp_path / "out" / "got.bin"
    with pytest.raises(ChecksumError) as ei:
        download_url(src.as_uri(), dest, "md5", md5(b"original"))
    assert not dest.exists()
    partial = list(dest.parent.glob("got.bin.*.partial"))
    assert len(partial) == 1 and partial[0].read_bytes() == b"tampered"
    assert str(partial[0]) in str(ei.value) and md5(b"original") in str(ei.value)


# ----------------------------------------------------------------------------------------- safe_extract


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.linkname = kind, target
    return m


def _device(name: str) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type, m.devmajor, m.devminor = tarfile.CHRTYPE, 1, 3
    return m


@pytest.mark.parametrize(
    "bad, member",
    [
        (_file("good/../../evil"), "good/../../evil"),
        (_file("../evil"), "../evil"),
        (_file("/tmp/evil_abs"), "/tmp/evil_abs"),
        (_link("good/link", "/etc/passwd"), "good/link"),
        (_link("good/link", "../../outside"), "good/link"),
        (_link("good/hard", "../outside", tarfile.LNKTYPE), "good/hard"),
        (_device("good/null"), "good/null"),
    ],
)
def test_safe_extract_rejects_unsafe_tar_and_extracts_nothing(tmp_path, bad, member):
    # good members come first: the check must look at all members before writing any
    archive = tar_with(tmp_path / "a.tar", [_file("good/a.txt"), _file("good/b.txt"), bad])
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as ei:
        safe_extract(archive, dest)
    assert repr(member) in str(ei.value) and str(archive) in str(ei.value)
    assert list(dest.rglob("*")) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_safe_extract_allows_link_inside(tmp_path):
    archive = tar_with(tmp_path / "a.tar", [_file("top/a.txt"), _link("top/sub/l", "../a.txt")], payload=b"hi")
    made = safe_extract(archive, tmp_path / "dest")
    assert made == [tmp_path / "dest" / "top"]
    assert (tmp_path / "dest" / "top" / "sub" / "l").read_bytes() == b"hi"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_safe_extract_rejects_unsafe_zip(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "a")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="unsafe"):
        safe_extract(archive, dest)
    assert list(dest.rglob("*")) == []


def test_safe_extract_rejects_zip_symlink_outside(tmp_path):
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("ok/link")
    info.external_attr = (0o120777 << 16)  # S_IFLNK
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "../../etc/passwd")
    with pytest.raises(DataError, match="'ok/link'.*outside"):
        safe_extract(archive, tmp_path / "dest")


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_safe_extract_good_archive(tmp_path, suffix):
    src = tmp_path / "src" / "cifar-10-batches-py"
    (src / "sub").mkdir(parents=True)
    (src / "data_batch_1").write_bytes(b"\x00\x01" * 100)
    (src / "sub" / "x.txt").write_text("x")
    archive = make_archive(tmp_path / f"a{suffix}", src)
    dest = tmp_path / "dest"
    assert safe_extract(archive, dest) == [dest / "cifar-10-batches-py"]
    assert (dest / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"\x00\x01" * 100
    assert (dest / "cifar-10-batches-py" / "sub" / "x.txt").read_text() == "x"
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # no temporary folder left

    with pytest.raises(DataError, match="already exists"):
        safe_extract(archive, dest)


def test_safe_extract_unknown_type_and_corrupt_archive(tmp_path):
    with pytest.raises(DataError, match=r"\.tar, \.tar\.gz, \.tgz or \.zip"):
        safe_extract(tmp_path / "a.rar", tmp_path / "dest")
    bad = tmp_path / "a.tar.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="not a readable archive"):
        safe_extract(bad, tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []
