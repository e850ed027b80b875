"""Safe extraction of a model archive into a fresh directory.

Every member is checked before anything is written: absolute names, ``..`` segments, links that point outside
the archive root, hard links to names outside it, device files and FIFOs are refused, and so are archives with
too many members or whose extracted size exceeds the limit (a decompression bomb declares its sizes in the
member headers, so the sum is known before extraction). The members are then written by this module, not by
``tarfile.extractall``, into a staging directory that the caller renames into place: the ``filter="data"`` that makes
``extractall`` safe exists only from Python 3.11.4 (and 3.8.17, 3.9.17, 3.10.12), and openmme runs on Debian 12's
3.11.2. The writer does what that filter does: it never writes through a symlink, never follows one when it creates
a file, keeps no owner and no setuid/setgid/sticky or group/other write bit, copies a hard link's data, and checks
after the last member that every symlink resolves inside the destination. Where the interpreter has
``tarfile.data_filter``, it also vets every member as a second line of defence.

A full disk (``ENOSPC``, ``EDQUOT``) is not the archive's fault: that OSError passes through unchanged
(``disk_full`` tells it apart), for the caller to answer as a storage error, never as a refused archive.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArchiveRefused", "ExtractLimits", "disk_full", "extract_archive"]


class ArchiveRefused(ValueError):
    """The archive is unsafe or unreadable; the message says which member and why."""


# Below this many extracted bytes the ratio is not checked: small models (a JSON booster) compress well and
# cannot hurt anyone.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024


# The disk (or the user's quota on it) is full: the operator's to fix, whatever was being written.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk written to is full (no space, or over quota)."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int
    max_members: int
    max_ratio: int = 0  # extracted bytes per archive byte; 0: not checked


def _inside(root_relative: str) -> bool:
    """True when a normalised relative path stays inside the archive root."""
    return not (root_relative.startswith("/") or root_relative == ".." or root_relative.startswith("../"))


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveRefused(f"member {name!r} has an absolute path")
    normalised = posixpath.normpath(name)
    if not _inside(normalised) or ".." in name.split("/"):
        raise ArchiveRefused(f"member {name!r} points outside the archive")
    if normalised == "." and not member.isdir():
        raise ArchiveRefused(f"member {name!r} would replace the archive root")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(normalised), member.linkname))
        if member.linkname.startswith("/") or not _inside(target):
            raise ArchiveRefused(f"symlink {name!r} -> {member.linkname!r} points outside the archive")
    elif member.islnk():
        target = posixpath.normpath(member.linkname)
        if member.linkname.startswith("/") or not _inside(target):
            raise ArchiveRefused(f"hard link {name!r} -> {member.linkname!r} points outside the archive")
    elif not (member.isfile() or member.isdir()):
        raise ArchiveRefused(f"member {name!r} is a device, FIFO or other special file")


def extract_archive(archive: Path, destination: Path, limits: ExtractLimits) -> int:
    """Extract ``archive`` (tar, optionally gzip/bz2/xz) into the empty or new ``destination``.

    Returns the extracted size in bytes. Raises ArchiveRefused, or the OSError of a full disk (``disk_full``),
    having written nothing outside ``destination``; the caller removes ``destination`` on failure.
    """
    try:
        packed = max(archive.stat().st_size, 1)
        with tarfile.open(archive, mode="r:*") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for member in tar:
                members.append(member)
                if len(members) > limits.max_members:
                    raise ArchiveRefused(f"archive has more than {limits.max_members} members")
                _check_member(member)
                total += max(member.size, 0) if member.isfile() else 0
                if limits.max_bytes and total > limits.max_bytes:
                    raise ArchiveRefused(f"archive expands to more than {limits.max_bytes} bytes")
                if limits.max_ratio and total > RATIO_FLOOR_BYTES and total > limits.max_ratio * packed:
                    raise ArchiveRefused(
                        f"archive expands more than {limits.max_ratio} times its size (a decompression bomb?)"
                    )
            if not members:
                raise ArchiveRefused("archive is empty")
            destination.mkdir(parents=True, exist_ok=True)
            _write_members(tar, members, destination.resolve())
    except ArchiveRefused:
        raise
    except _FILTER_ERRORS as exc:
        raise ArchiveRefused(f"archive refused: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, RecursionError) as exc:
        if disk_full(exc):
            raise  # the cache disk is full, not the archive broken: the caller's storage error
        # KeyError: a hard link to a member the archive lacks; RecursionError: links that loop.
        raise ArchiveRefused(f"not a readable tar.gz archive: {exc}") from exc
    return total


# tarfile's data filter and its errors, on the interpreters that have them (3.11.4 and later).
_DATA_FILTER = getattr(tarfile, "data_filter", None)
_FILTER_ERRORS: tuple[type[Exception], ...] = (
    (tarfile.FilterError,) if hasattr(tarfile, "FilterError") else ()  # type: ignore[attr-defined,unused-ignore]
)

_COPY_CHUNK = 1024 * 1024


def _file_mode(member: tarfile.TarInfo) -> int:
    """The data filter's mode for a regular file: owner read and write, no setuid, setgid, sticky or group/other
    write bit, and execute bits only where the owner could execute."""
    mode = (member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR
    if not member.mode & stat.S_IXUSR:
        mode &= ~0o111
    return mode


def _refuse_through_symlink(root: Path, name: str) -> None:
    """Refuse a member whose parent folders include a symlink: writing through one could land anywhere."""
    parent = root
    for part in name.split("/")[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise ArchiveRefused(f"member {name!r} goes through the symlink {str(parent.relative_to(root))!r}")


def _write_members(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path) -> None:
    """Write the checked ``members`` under ``root``; every name is normalised and inside the root already."""
    links: list[Path] = []
    for member in members:
        if _DATA_FILTER is not None:
            _DATA_FILTER(member, str(root))
        name = posixpath.normpath(member.name)
        if name == ".":
            continue
        _refuse_through_symlink(root, name)
        target = root / name
        if target.is_symlink():
            raise ArchiveRefused(f"member {member.name!r} would replace the symlink of the same name")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if member.issym():
            os.symlink(member.linkname, target)
            links.append(target)
            continue
        source = tar.extractfile(member)  # a hard link's data is its target member's
        if source is None:
            raise ArchiveRefused(f"member {member.name!r} has no data")
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with source, os.fdopen(descriptor, "wb") as sink:
            while chunk := source.read(_COPY_CHUNK):
                sink.write(chunk)
        os.chmod(target, _file_mode(member))
    # Each link was checked on its own text; a chain of links can still resolve elsewhere ("a" -> ".", then
    # "b" -> "a/../x"). Once every member is written the tree no longer changes, so a resolution now is final.
    for link in links:
        resolved = Path(os.path.realpath(link))
        if resolved != root and root not in resolved.parents:
            raise ArchiveRefused(f"symlink {str(link.relative_to(root))!r} resolves outside the archive")
