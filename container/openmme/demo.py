"""``openmme demo``: the whole product on one machine, from nothing to real predictions.

Starts SeaweedFS on 127.0.0.1, trains and publishes the sample models into ``s3://models/demo/``, starts
``openmme serve`` as its own process, invokes every sample through the unchanged boto3 sagemaker-runtime
client, checks the answers against the same boosters predicting in-process, and stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from openmme.ports import free_port, port_is_free

__all__ = ["run_demo", "wait_for_ping"]

PREFIX = "s3://models/demo/"
ENDPOINT = "openmme-demo"


def wait_for_ping(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the endpoint exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the endpoint did not answer /ping within {timeout:g} s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(keep_running: bool = False, port: int = 0, workdir: Path | None = None) -> int:
    import boto3
    import xgboost

    from openmme.publish import publish_archive
    from openmme.publish.samples import SAMPLES, make_rows, sample_archive, train_booster
    from openmme.seaweed import EmbeddedS3

    # SIGTERM unwinds like Ctrl-C, so the endpoint and SeaweedFS are stopped on the way out, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = workdir or Path(tempfile.mkdtemp(prefix="openmme-demo-"))
    port = port or (8080 if port_is_free(8080) else free_port())
    print(f"openmme demo: working in {workdir}")
    print("1/4 starting SeaweedFS (embedded S3) on 127.0.0.1 …", flush=True)
    with EmbeddedS3(workdir / "s3") as s3:
        client = s3.client()
        client.create_bucket(Bucket="models")  # type: ignore[attr-defined]
        print(f"    S3 at {s3.endpoint_url}")

        print(f"2/4 training and publishing {len(SAMPLES)} sample models into {PREFIX} …", flush=True)
        boosters = {}
        for sample in SAMPLES:
            boosters[sample.target_model] = booster = train_booster(sample.objective, sample.seed)
            publish_archive(sample_archive(booster), PREFIX, sample.target_model, overwrite=True, client=client)
            print(f"    {PREFIX}{sample.target_model}  ({sample.objective})")

        url = f"http://127.0.0.1:{port}"
        print(f"3/4 starting the endpoint on {url} …", flush=True)
        env = {**os.environ, **s3.environment()}
        command = [
            sys.executable,
            "-m",
            "openmme.cli",
            "serve",
            "--model-prefix",
            PREFIX,
            "--endpoint-name",
            ENDPOINT,
            "--port",
            str(port),
            "--cache-dir",
            str(workdir / "cache"),
        ]
        with (workdir / "endpoint.log").open("ab") as log:
            endpoint = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_ping(url, endpoint, timeout=180)
            runtime = boto3.client(
                "sagemaker-runtime",
                endpoint_url=url,
                region_name=s3.region,
                aws_access_key_id="demo",
                aws_secret_access_key="demo",
            )
            rows = make_rows(3, seed=42)
            body = "\n".join(",".join(f"{value:.6f}" for value in row) for row in rows)
            print("4/4 invoking every model through boto3's sagemaker-runtime client:", flush=True)
            mismatches = 0
            for sample in SAMPLES:
                started = time.perf_counter()
                response = runtime.invoke_endpoint(
                    EndpointName=ENDPOINT, TargetModel=sample.target_model, ContentType="text/csv", Body=body
                )
                first_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                runtime.invoke_endpoint(
                    EndpointName=ENDPOINT, TargetModel=sample.target_model, ContentType="text/csv", Body=body
                )
                warm_ms = (time.perf_counter() - started) * 1000
                served = [float(value) for value in response["Body"].read().decode().split(",")]
                parsed = [[float(value) for value in line.split(",")] for line in body.splitlines()]
                local = boosters[sample.target_model].predict(xgboost.DMatrix(parsed)).tolist()
                same = served == local
                mismatches += not same
                print(
                    f"    {sample.target_model:24s} {served}  "
                    f"{'= in-process xgboost' if same else f'!= in-process {local}'}  "
                    f"(first {first_ms:.0f} ms, warm {warm_ms:.1f} ms)"
                )
            if not keep_running:
                print("\n`openmme demo --keep-running` (or `scripts/demo --keep-running`) leaves all this up to try.")
            else:
                s3_settings = " ".join(f"{key}={shlex.quote(value)}" for key, value in s3.environment().items())
                # From here on, Ctrl-C or SIGTERM is the way to stop, not a failure.
                with contextlib.suppress(KeyboardInterrupt):
                    print(
                        "\nTry it yourself while it runs:\n"
                        "    curl -H 'X-Amzn-SageMaker-Target-Model: houston/model.tar.gz' -H 'Content-Type: text/csv'"
                        f" --data-binary '{body.splitlines()[0]}' {url}/invocations\n"
                        f"    curl {url}/models\n"
                        "The demo's S3, for `openmme publish` and `openmme models list --prefix s3://models/demo/`:\n"
                        f"    export {s3_settings}\n"
                        "\nThe endpoint is up; Ctrl-C (or SIGTERM) stops it and SeaweedFS.",
                        flush=True,
                    )
                    endpoint.wait()
            return 1 if mismatches else 0
        finally:
            endpoint.terminate()
            try:
                endpoint.wait(60)
            except subprocess.TimeoutExpired:
                endpoint.kill()
            print("stopped the endpoint and SeaweedFS.")
