"""``openmme demo``: the whole product on one machine, from nothing to real predictions.

Starts SeaweedFS on 127.0.0.1, trains and publishes the sample models into ``s3://models/demo/``, starts
``openmme serve`` as its own process, invokes every sample through the unchanged boto3 sagemaker-runtime
client, checks the answers against the same boosters predicting in-process, and stops what it started. Its
work folder (a new temp dir unless ``--workdir`` names one) goes too, also on Ctrl-C or SIGTERM; it is kept
only when something failed, for its logs.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from openmme.ports import free_port, port_is_free

__all__ = ["boto3_lines", "run_demo", "wait_for_ping"]

PREFIX = "s3://models/demo/"
ENDPOINT = "openmme-demo"


def wait_for_ping(
    url: str, process: subprocess.Popen[bytes], timeout: float, context: ssl.SSLContext | None = None
) -> None:
    """Until ``url``/ping answers 200 (``context``: what to trust over HTTPS); RuntimeError if the endpoint exits or
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the endpoint exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the endpoint did not answer /ping within {timeout:g} s")


def boto3_lines(url: str, region: str, target_model: str, row: str) -> str:
    """Python lines that invoke the demo's endpoint with boto3, each a whole statement (so they paste into a
    python prompt as they are); no credentials are checked, but botocore signs, so it needs some."""
    return (
        "import boto3\n"
        f'runtime = boto3.client("sagemaker-runtime", endpoint_url="{url}", region_name="{region}",'
        ' aws_access_key_id="demo", aws_secret_access_key="demo")\n'
        f'response = runtime.invoke_endpoint(EndpointName="{ENDPOINT}", TargetModel="{target_model}",'
        f' ContentType="text/csv", Accept="text/csv", Body="{row}")\n'
        'print(response["Body"].read().decode())'
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# Also SIGINT: one started in the background by a shell inherits it ignored, and would not stop on Ctrl-C's signal.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_demo(keep_running: bool = False, port: int = 0, workdir: Path | None = None) -> int:
    # SIGTERM (and a closed terminal's SIGHUP) unwinds like Ctrl-C, so the endpoint and SeaweedFS are stopped on
    # the way out, not orphaned, and the work folder is removed.
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    own_workdir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="openmme-demo-"))
    succeeded = False
    try:
        code = _run(keep_running, port, workdir)
        succeeded = code == 0
        return code
    except KeyboardInterrupt:
        succeeded = True  # stopped on purpose: nothing to look into
        raise
    finally:
        for signum in _STOP_SIGNALS:  # a second Ctrl-C does not stop the clean-up halfway
            signal.signal(signum, signal.SIG_IGN)
        if own_workdir and succeeded:
            shutil.rmtree(workdir, ignore_errors=True)
        elif own_workdir:
            print(f"openmme demo: its files and logs are kept in {workdir}", file=sys.stderr)


def _run(keep_running: bool, port: int, workdir: Path) -> int:
    import boto3
    import xgboost

    from openmme.publish import publish_archive
    from openmme.publish.samples import SAMPLES, make_rows, sample_archive, train_booster
    from openmme.seaweed import EmbeddedS3

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
        # Its JSON lines (one per request, load and eviction) apart from its text log.
        requests_log, endpoint_log = workdir / "requests.log", workdir / "endpoint.log"
        with requests_log.open("ab") as lines, endpoint_log.open("ab") as text:
            endpoint = subprocess.Popen(command, env=env, stdout=lines, stderr=text)
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
                    EndpointName=ENDPOINT,
                    TargetModel=sample.target_model,
                    ContentType="text/csv",
                    Accept="text/csv",
                    Body=body,
                )
                first_ms = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                runtime.invoke_endpoint(
                    EndpointName=ENDPOINT,
                    TargetModel=sample.target_model,
                    ContentType="text/csv",
                    Accept="text/csv",
                    Body=body,
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
                row = body.splitlines()[0]
                # From here on, Ctrl-C or SIGTERM is the way to stop, not a failure.
                with contextlib.suppress(KeyboardInterrupt):
                    print(
                        f"\nEndpointName: {ENDPOINT}    endpoint_url: {url}    region: {s3.region}\n"
                        f"Request log (one JSON line per invocation, load and eviction): {requests_log}\n"
                        f"The endpoint's own log: {endpoint_log}\n"
                        "\nTry it yourself while it runs, with curl:\n"
                        "    curl -H 'X-Amzn-SageMaker-Target-Model: houston/model.tar.gz' -H 'Content-Type: text/csv'"
                        " -H 'Accept: text/csv'"
                        f" --data-binary '{row}' {url}/invocations\n"
                        f"    curl {url}/models\n"
                        "or with boto3 (paste into python):\n"
                        f"{boto3_lines(url, s3.region, 'houston/model.tar.gz', row)}\n\n"
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
