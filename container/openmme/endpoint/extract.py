"""Safe extraction of a model archive into a fresh directory.

Every member is checked before anything is written: absolute names, ``..`` segments, links that point outside
the archive root, hard links to names outside it, device files and FIFOs are refused, and so are archives with
too many members or whose extracted size exceeds the limit (a decompression bomb declares its sizes in the
member headers, so the sum is known before extraction). ``tarfile``'s own ``data`` filter then runs as a
second line of defence while extracting into a staging directory that the caller renames into place.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ArchiveRefused", "ExtractLimits", "extract_archive"]


class ArchiveRefused(ValueError):
    """The archive is unsafe or unreadable; the message says which member and why."""


# Below this many extracted bytes the ratio is not checked: small models (a JSON booster) compress well and
# cannot hurt anyone.
RATIO_FLOOR_BYTES = 16 * 1024 * 1024


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

    Returns the extracted size in bytes. Raises ArchiveRefused, having written nothing outside
    ``destination``; the caller removes ``destination`` on failure.
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
            tar.extractall(destination, members=members, filter="data")
    except ArchiveRefused:
        raise
    except tarfile.FilterError as exc:
        raise ArchiveRefused(f"archive refused: {exc}") from exc
    except (tarfile.TarError, EOFError, OSError, ValueError, KeyError, RecursionError) as exc:
        # KeyError: a hard link to a member the archive lacks; RecursionError: links that loop.
        raise ArchiveRefused(f"not a readable tar.gz archive: {exc}") from exc
    return total
