"""Property tests for what comes from outside: TargetModel headers and archive members, drawn by hypothesis
to include the tricks (``..``, absolute paths, links out, control characters)."""

from __future__ import annotations

import contextlib
import os
import posixpath
import tarfile
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from openmme.endpoint.errors import ValidationError
from openmme.endpoint.extract import ArchiveRefused, ExtractLimits, extract_archive
from openmme.endpoint.names import S3Location, validate_target_model
from tests.support import make_tar

segments = st.sampled_from(["..", ".", "", "a", "b c", "model.tar.gz", "é", "\t", "x" * 30, " lead"])
targets = st.one_of(
    st.lists(segments, min_size=1, max_size=6).map("/".join),
    st.text(max_size=40),
    st.lists(segments, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)),
)


@settings(max_examples=500, deadline=None)
@given(targets)
def test_an_accepted_target_model_always_stays_under_the_prefix(target: str) -> None:
    prefix = S3Location.parse_prefix("s3://models/prod/")
    try:
        validate_target_model(target)
    except ValidationError:
        return
    key = prefix.child(target).key
    assert posixpath.normpath(key).startswith("prod/")
    assert not any(segment in {"", ".", ".."} for segment in target.split("/"))
    assert target.isprintable() and not target.startswith((" ", "/")) and 0 < len(target) <= 1024


names = st.lists(st.sampled_from(["..", ".", "a", "b", "/", "/tmp", "code", "x.json"]), min_size=1, max_size=4).map(
    lambda parts: "/".join(parts)
)
member_kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])
members = st.lists(st.tuples(names, member_kinds, names), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(members)
def test_extraction_never_writes_outside_its_destination(spec: list[tuple[str, bytes, str]]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        sandbox = root / "sandbox"
        destination = sandbox / "model"
        sandbox.mkdir()
        entries = []
        for name, kind, link in spec:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            entries.append((info, b"data" if kind == tarfile.REGTYPE else None))
        archive = root / "model.tar.gz"
        archive.write_bytes(make_tar(entries))
        with contextlib.suppress(ArchiveRefused):
            extract_archive(archive, destination, ExtractLimits(max_bytes=10_000, max_members=50))
        outside = [path for path in root.rglob("*") if path != archive and sandbox not in [path, *path.parents]]
        assert outside == []
        assert [path.name for path in sandbox.iterdir()] in ([], ["model"])
        if destination.exists():
            # Whatever was written, links included, points inside the destination.
            inside = os.path.realpath(destination) + os.sep
            for path in destination.rglob("*"):
                try:
                    real = os.path.realpath(path, strict=True)
                except OSError:
                    continue  # a dangling link or a link loop inside the model: it reaches nothing at all
                assert (real + os.sep).startswith(inside), path
