"""A full cache disk against the real processes: the endpoint's cache directory is a small tmpfs of its own (mounted
for the test, unmounted after it; skipped where mounting is not permitted), filled by models too large for it and by
an operator's other files. The caller gets a typed 507 (InsufficientStorage), never a 500 or the archive's
ModelError; cached models keep serving; nothing half-written is kept; once space is freed the same model loads."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import xgboost

from openmme.endpoint.cache import mms_model_name
from openmme.publish.samples import make_rows
from tests.conftest import Endpoint, EndpointFactory
from tests.support import expected, scrape, value, wait_until

pytestmark = pytest.mark.integration

ROWS = make_rows(2, seed=41)
MIB = 1024 * 1024
DISK = 16 * MIB  # the tmpfs: MMS's own files under the cache directory take about 100 kB of it


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, mounted for the test and always unmounted after it."""
    mountpoint = tmp_path / "cache"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the cache directory needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)


def archive_with_padding(booster: xgboost.Booster, padding: bytes) -> bytes:
    """The booster as ``xgboost-model`` (which wins over any other file) beside ``padding.bin``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in (("xgboost-model", bytes(booster.save_raw("ubj"))), ("padding.bin", padding)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def refused(endpoint: Endpoint, target: str) -> botocore.exceptions.ClientError:
    runtime = endpoint.runtime(retries=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        endpoint.predictions(target, ROWS, client=runtime)
    return caught.value


def test_a_full_cache_disk_is_a_typed_507_cached_models_serve_and_the_model_loads_once_there_is_room(
    start_endpoint: EndpointFactory,
    prefix: str,
    publish: Any,
    boosters: dict[str, xgboost.Booster],
    small_disk: Path,
) -> None:
    booster = boosters["reg:squarederror"]
    want = expected(booster, ROWS)
    publish(prefix, "small.tar.gz", booster)
    # 12 MiB that do not compress: its download and extraction need about 24 MiB, more than the whole disk.
    publish(prefix, "huge.tar.gz", archive=archive_with_padding(booster, random.Random(7).randbytes(12 * MIB)))
    # 12 MiB of zeros: a small archive, so the check before the download passes; its extraction fills the disk.
    publish(prefix, "wide.tar.gz", archive=archive_with_padding(booster, bytes(12 * MIB)))

    endpoint = start_endpoint(prefix, "--cache-dir", str(small_disk))
    try:
        assert endpoint.predictions("small.tar.gz", ROWS) == want

        error = refused(endpoint, "huge.tar.gz")
        assert type(error) is botocore.exceptions.ClientError  # no modeled class: botocore's model has no 507
        assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 507
        assert error.response["Error"]["Code"] == "InsufficientStorage"
        message = error.response["Error"]["Message"]
        assert "no room on the endpoint's cache disk for model 'huge.tar.gz'" in message
        assert "retry later" in message and "\n" not in message

        # An operator's other files leave about 8 MiB: wide's archive fits, its 12 MiB extracted do not.
        filler = small_disk / "operator-file"
        filler.write_bytes(bytes(8 * MIB))
        assert wait_until(lambda: value(scrape(endpoint), "openmme_cache_disk_free_bytes") < 8 * MIB, timeout=30)
        error = refused(endpoint, "wide.tar.gz")
        assert (error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"]["Code"]) == (
            507,
            "InsufficientStorage",
        )
        assert "No space left on device" in error.response["Error"]["Message"]
        assert list((small_disk / "staging").iterdir()) == []  # nothing half-written kept
        assert not (small_disk / "models" / mms_model_name("wide.tar.gz")).exists()
        assert "wide.tar.gz" not in endpoint.models()  # not remembered, as failed or otherwise

        assert endpoint.predictions("small.tar.gz", ROWS) == want  # the cached model kept serving
        samples = scrape(endpoint)
        assert value(samples, "openmme_cache_disk_refusals_total") == 2
        assert value(samples, "openmme_model_load_failures_total") == 0  # not the models' failures
        assert value(samples, "openmme_invocations_total", status="507") == 2
        assert value(samples, "openmme_invocations_total", status="500") == 0

        filler.unlink()  # the operator frees space: the same model loads, no restart
        assert endpoint.predictions("wide.tar.gz", ROWS) == want
        assert endpoint.models()["wide.tar.gz"]["downloads"] == 1  # the refused attempt is not a download
    finally:
        endpoint.stop()  # before the tmpfs is unmounted
