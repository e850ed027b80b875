"""Safe extraction against hostile archives: each is refused and nothing lands outside the destination."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path
from typing import BinaryIO

import pytest

from openmme.endpoint import extract
from openmme.endpoint.extract import ArchiveRefused, ExtractLimits, disk_full, extract_archive
from tests.support import make_tar

LIMITS = ExtractLimits(max_bytes=10_000, max_members=50)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def write(tmp_path: Path, data: bytes) -> Path:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(data)
    return archive


def files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([(member("../escape"), b"x")], "outside"),
        ([(member("a/../../escape"), b"x")], "outside"),
        ([(member("/tmp/abs-escape"), b"x")], "absolute"),
        ([(member("link", tarfile.SYMTYPE, "../.."), None)], "symlink"),
        ([(member("link", tarfile.SYMTYPE, "/etc"), None)], "symlink"),
        ([(member("sub/link", tarfile.SYMTYPE, "../../x"), None)], "symlink"),
        ([(member("hard", tarfile.LNKTYPE, "../outside"), None)], "hard link"),
        ([(member("hard", tarfile.LNKTYPE, "/etc/passwd"), None)], "hard link"),
        ([(member("dev", tarfile.CHRTYPE), None)], "device"),
        ([(member("blk", tarfile.BLKTYPE), None)], "device"),
        ([(member("fifo", tarfile.FIFOTYPE), None)], "FIFO"),
        ([(member("big"), b"0" * 10_001)], "more than 10000 bytes"),
        ([(member(f"f{i}"), b"") for i in range(51)], "more than 50 members"),
        ([], "empty"),
        # Found by the property test: both used to escape as errors other than a refusal.
        ([(member(".", tarfile.SYMTYPE, "."), None)], "replace the archive root"),
        ([(member("hard", tarfile.LNKTYPE, "missing"), None)], "not a readable"),
    ],
)
def test_hostile_archives_are_refused_with_nothing_written_outside(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    archive = write(tmp_path, make_tar(members))
    destination = tmp_path / "out" / "model"
    before = files_under(tmp_path)
    with pytest.raises(ArchiveRefused, match=reason):
        extract_archive(archive, destination, LIMITS)
    after = files_under(tmp_path) - {str(p.relative_to(tmp_path)) for p in destination.parent.rglob("*")}
    assert after - {"out"} == before
    assert not Path("/tmp/abs-escape").exists()


def test_a_decompression_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    # 10 MB of zeros compresses to a few kB; the declared member size gives it away before extraction.
    archive = write(tmp_path, make_tar([(member("zeros"), bytes(10_000_000))]))
    assert archive.stat().st_size < 100_000
    with pytest.raises(ArchiveRefused, match="expands to more than"):
        extract_archive(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()


def test_a_bomb_under_the_byte_limit_is_refused_by_its_ratio(tmp_path: Path) -> None:
    archive = write(tmp_path, make_tar([(member("zeros"), bytes(20_000_000))]))
    limits = ExtractLimits(max_bytes=10**9, max_members=50, max_ratio=200)
    with pytest.raises(ArchiveRefused, match="expands more than 200 times"):
        extract_archive(archive, tmp_path / "out", limits)
    # The same content is fine for an operator who raised the ratio.
    extract_archive(archive, tmp_path / "ok", ExtractLimits(max_bytes=10**9, max_members=50, max_ratio=0))
    assert (tmp_path / "ok" / "zeros").stat().st_size == 20_000_000


def test_garbage_is_refused_as_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ArchiveRefused, match="not a readable"):
        extract_archive(write(tmp_path, b"this is not a tarball"), tmp_path / "out", LIMITS)


def test_a_normal_archive_with_internal_links_extracts(tmp_path: Path) -> None:
    data = make_tar(
        [
            (member("code", tarfile.DIRTYPE), None),
            (member("code/inference.py"), b"def model_fn(d): return d\n"),
            (member("xgboost-model"), b"{}"),
            (member("alias", tarfile.SYMTYPE, "xgboost-model"), None),
            (member("code/up", tarfile.SYMTYPE, "../xgboost-model"), None),
        ]
    )
    destination = tmp_path / "model"
    size = extract_archive(write(tmp_path, data), destination, LIMITS)
    assert size == len(b"def model_fn(d): return d\n") + 2
    assert (destination / "alias").read_bytes() == b"{}"
    assert (destination / "code" / "up").read_bytes() == b"{}"


def test_plain_uncompressed_tar_is_accepted(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("xgboost-model")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    extract_archive(write(tmp_path, buffer.getvalue()), tmp_path / "model", LIMITS)
    assert (tmp_path / "model" / "xgboost-model").read_bytes() == b"{}"


def test_a_chain_of_links_that_resolves_outside_is_refused(tmp_path: Path) -> None:
    # Each link alone stays inside on paper ("." and "x"); followed on disk, "b" is the destination's parent's "x".
    data = make_tar([(member("a", tarfile.SYMTYPE, "."), None), (member("b", tarfile.SYMTYPE, "a/../x"), None)])
    destination = tmp_path / "out" / "model"
    with pytest.raises(ArchiveRefused, match="outside"):
        extract_archive(write(tmp_path, data), destination, LIMITS)


def test_a_member_written_through_a_symlink_is_refused(tmp_path: Path) -> None:
    data = make_tar(
        [
            (member("sub", tarfile.DIRTYPE), None),
            (member("link", tarfile.SYMTYPE, "sub"), None),
            (member("link/payload"), b"x"),
        ]
    )
    destination = tmp_path / "out" / "model"
    with pytest.raises(ArchiveRefused, match="goes through the symlink 'link'"):
        extract_archive(write(tmp_path, data), destination, LIMITS)
    assert not (destination / "sub" / "payload").exists()


def test_modes_are_those_of_the_data_filter(tmp_path: Path) -> None:
    setuid = member("setuid")
    setuid.mode = 0o6777
    plain = member("plain")
    plain.mode = 0o666
    locked = member("locked")
    locked.mode = 0o000
    data = make_tar([(setuid, b"#!/bin/sh\n"), (plain, b"{}"), (locked, b"x")])
    extract_archive(write(tmp_path, data), tmp_path / "model", LIMITS)
    modes = {name: (tmp_path / "model" / name).stat().st_mode & 0o7777 for name in ("setuid", "plain", "locked")}
    assert modes == {"setuid": 0o755, "plain": 0o644, "locked": 0o600}


def test_a_hard_link_inside_gets_its_target_data(tmp_path: Path) -> None:
    data = make_tar([(member("xgboost-model"), b"{}"), (member("copy", tarfile.LNKTYPE, "xgboost-model"), None)])
    extract_archive(write(tmp_path, data), tmp_path / "model", LIMITS)
    assert (tmp_path / "model" / "copy").read_bytes() == b"{}"
    assert not (tmp_path / "model" / "copy").is_symlink()


class _FillingOs:
    """``os`` as extract.py sees it, but every file it writes fills the disk after ``room`` bytes: the real file
    gets what fits, then the write fails with ``error`` (ENOSPC, EDQUOT), as the kernel's would."""

    def __init__(self, error: int, room: int) -> None:
        self.error = error
        self.room = room

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def fdopen(self, descriptor: int, mode: str) -> _FillingWriter:
        return _FillingWriter(os.fdopen(descriptor, mode), self.error, self.room)


class _FillingWriter:
    def __init__(self, sink: BinaryIO, error: int, room: int) -> None:
        self.sink, self.error, self.room = sink, error, room

    def __enter__(self) -> _FillingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sink.close()

    def write(self, chunk: bytes) -> int:
        fits = chunk[: max(self.room, 0)]
        self.room -= len(fits)
        self.sink.write(fits)
        if len(fits) < len(chunk):
            raise OSError(self.error, os.strerror(self.error))
        return len(chunk)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_not_the_archive_s_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int) -> None:
    archive = write(tmp_path, make_tar([(member("model.bin"), b"x" * 5000)]))
    monkeypatch.setattr(extract, "os", _FillingOs(error, room=1000))
    with pytest.raises(OSError) as raised:
        extract_archive(archive, tmp_path / "out", LIMITS)
    assert not isinstance(raised.value, ArchiveRefused)
    assert raised.value.errno == error and disk_full(raised.value)
    assert (tmp_path / "out" / "model.bin").stat().st_size == 1000  # half-written: the caller removes it


def test_other_os_errors_still_refuse_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not disk_full(OSError(errno.EIO, "I/O error")) and not disk_full(ValueError("no space"))
    archive = write(tmp_path, make_tar([(member("model.bin"), b"x" * 5000)]))
    monkeypatch.setattr(extract, "os", _FillingOs(errno.EIO, room=1000))
    with pytest.raises(ArchiveRefused, match=r"not a readable tar\.gz archive: \[Errno 5\]"):
        extract_archive(archive, tmp_path / "out", LIMITS)
