"""How long publishing 100 small models takes with ``openmme.publish``, against the embedded SeaweedFS.

    .venv/bin/python bench/publish_100.py

The model is the quick start's sample booster archive (~4 KiB). Three ways: ``publish_archive`` one after the
other (each is HeadBucket + HeadObject + PutObject), the same from 8 threads, and ``publish_path`` from a local
``model.tar.gz``, which also extracts and loads every model with the XGBoost handler before uploading it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from openmme.publish import list_models, publish_archive, publish_path
from openmme.publish.samples import sample_archive, train_booster
from openmme.seaweed import EmbeddedS3

COUNT = 100


def timed(label: str, publish_all: Callable[[], None]) -> None:
    started = time.perf_counter()
    publish_all()
    print(f"{label}: {time.perf_counter() - started:.2f} s for {COUNT} models", flush=True)


def main() -> None:
    archive = sample_archive(train_booster("binary:logistic", seed=1))
    with tempfile.TemporaryDirectory(prefix="openmme-publish-bench-") as scratch:
        model_file = Path(scratch) / "model.tar.gz"
        model_file.write_bytes(archive)
        with EmbeddedS3(Path(scratch) / "s3") as s3, s3.environ():
            client = s3.client()
            client.create_bucket(Bucket="models")  # type: ignore[attr-defined]
            # One publish first, so that connection set-up is not counted against the first run.
            publish_archive(archive, "s3://models/warm-up/", "model.tar.gz", client=client)
            names = [f"city-{index:03d}/model.tar.gz" for index in range(COUNT)]
            print(f"archive: {len(archive)} bytes")

            def sequential() -> None:
                for name in names:
                    publish_archive(archive, "s3://models/sequential/", name, client=client)

            def threaded() -> None:
                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(lambda name: publish_archive(archive, "s3://models/threads/", name, client=client),
                                  names))  # fmt: skip

            def checked() -> None:
                for name in names:
                    publish_path(model_file, "s3://models/checked/", name, client=client)

            timed("publish_archive, one after the other", sequential)
            timed("publish_archive, 8 threads", threaded)
            timed("publish_path (checked by loading each)", checked)
            for prefix in ("sequential", "threads", "checked"):
                assert len(list(list_models(f"s3://models/{prefix}/", client=client))) == COUNT


if __name__ == "__main__":
    main()
