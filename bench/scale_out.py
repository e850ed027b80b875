"""Scale out: the same Zipf trace against one replica and against three with the same total room.

    .venv/bin/python bench/scale_out.py [--smoke]

Three set-ups, each replaying exactly the same requests: one endpoint with ``--max-models C``; three endpoints with
``--max-models C/3`` each behind nginx configured by ``openmme router-config`` (consistent hashing on the
TargetModel); and the same three spread round robin by the client (no affinity), to show what the hashing buys.
For each: the aggregate hit ratio (the replicas' counters summed, after a warm-up prefix), the S3 downloads, the
loads into MMS and the latency. The results replace the scale-out section of BENCHMARKS.md (between its markers),
which ``bench/run.py`` keeps when it rewrites the rest.

The full run takes about 11 minutes on 2 cores (each miss starts an MMS worker; three set-ups of ~450-600 misses);
``--smoke`` about one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from belady import hit_ratio, lru_hits
from harness import BUCKET, Endpoint, counters, percentile
from many_models import ManyModelsSizes, replay, target_model, zipf_trace
from openmme.ports import free_port
from openmme.publish.samples import make_rows, sample_archive, train_booster
from openmme.router import RouterOptions, nginx_config
from openmme.seaweed import EmbeddedS3
from sections import MARKERS, section_main

START, END = MARKERS[0]
REPLICAS = 3
# Isolated hosting, as recorded in BENCHMARKS.md: a miss is a worker start, which makes affinity's worth plain
# (and three dense replicas would start two shards each on these two cores).
HOSTING = ("--hosting", "isolated")

FULL = ManyModelsSizes(catalogue=200, capacity=30, length=1000, warm_up=200, clients=6)
SMOKE = ManyModelsSizes(catalogue=12, capacity=6, length=30, warm_up=6, clients=4)


@contextlib.contextmanager
def nginx(workdir: Path, replicas: Sequence[str]) -> Iterator[str]:
    """Real nginx on a free loopback port with the generated config; yields its URL."""
    import os
    import urllib.request

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    options = RouterOptions(
        listen=f"127.0.0.1:{port}",
        worker_processes="1",
        prefix_paths=str(workdir),
        user="root" if os.geteuid() == 0 else None,
        tries=len(replicas),
    )
    (workdir / "nginx.conf").write_text(nginx_config(replicas, options))
    command = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/ping", timeout=5).close()
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def measure(replicas: Sequence[str], fronts: Sequence[str], targets: Sequence[str], sizes: ManyModelsSizes) -> Any:
    body = ",".join(repr(float(value)) for value in make_rows(1, seed=3)[0]).encode()
    asyncio.run(replay(fronts, targets[: sizes.warm_up], body, sizes.clients))
    before = [counters(replica) for replica in replicas]
    measured = asyncio.run(replay(fronts, targets[sizes.warm_up :], body, sizes.clients))
    after = [counters(replica) for replica in replicas]
    delta = {key: sum(a[key] - b[key] for a, b in zip(after, before, strict=True)) for key in after[0]}
    total = [counters(replica) for replica in replicas]
    return {
        "hit_ratio": delta["hits"] / max(1, delta["hits"] + delta["misses"]),
        "counters": delta,
        # Every download since start, warm-up included: how many times the model archives left S3.
        "downloads_total": sum(item["downloads"] for item in total),
        "registrations_total": sum(item["registrations"] for item in total),
        "statuses": measured["statuses"],
        "p50_ms": percentile(measured["latencies"], 50) * 1000,
        "p99_ms": percentile(measured["latencies"], 99) * 1000,
        "throughput_rps": len(measured["latencies"]) / measured["seconds"],
    }


def run(sizes: ManyModelsSizes, workdir: Path) -> dict[str, Any]:
    ranks = zipf_trace(sizes.catalogue, sizes.length, sizes.exponent, sizes.seed)
    targets = [target_model(rank) for rank in ranks]
    archive = sample_archive(train_booster("binary:logistic", seed=1, rounds=20, rows=500))
    per_replica = sizes.capacity // REPLICAS
    results: dict[str, Any] = {
        "sizes": sizes.__dict__,
        "distinct_models_in_trace": len(set(ranks)),
        "lru_offline_one": hit_ratio(lru_hits(ranks, sizes.capacity), sizes.warm_up),
    }
    s3 = EmbeddedS3(workdir / "s3").start()
    try:
        with s3.environ():
            client: Any = s3.client()
            client.create_bucket(Bucket=BUCKET)
            for rank in range(sizes.catalogue):
                client.put_object(Bucket=BUCKET, Key=f"models/{target_model(rank)}", Body=archive)
            with Endpoint(workdir / "one", [*HOSTING, "--max-models", str(sizes.capacity)]) as one:
                results["one"] = measure([one.url], [one.url], targets, sizes)
            print("bench: one replica done", file=sys.stderr, flush=True)
            for setup in ("hashed", "round_robin"):
                flags = [*HOSTING, "--max-models", str(per_replica)]
                with contextlib.ExitStack() as stack:
                    endpoints = [stack.enter_context(Endpoint(workdir / f"{setup}{i}", flags)) for i in range(3)]
                    urls = [endpoint.url for endpoint in endpoints]
                    if setup == "hashed":
                        addresses = [url.removeprefix("http://") for url in urls]
                        router = stack.enter_context(nginx(workdir / "nginx", addresses))
                        results[setup] = measure(urls, [router], targets, sizes)
                    else:
                        results[setup] = measure(urls, urls, targets, sizes)
                print(f"bench: three replicas, {setup}, done", file=sys.stderr, flush=True)
    finally:
        s3.stop(grace=0.5)
    return results


def markdown(results: dict[str, Any], command: str) -> str:
    sizes = results["sizes"]
    capacity = sizes["capacity"]
    rows = [
        ("1 replica, `--max-models " + str(capacity) + "`", results["one"]),
        (f"3 replicas, `--max-models {capacity // REPLICAS}` each, nginx hashing on TargetModel", results["hashed"]),
        (f"3 replicas, `--max-models {capacity // REPLICAS}` each, round robin (no affinity)", results["round_robin"]),
    ]
    lines = [
        START,
        "## Scale out: 1 vs 3 replicas, same Zipf trace, same total room",
        "",
        f"`{command}` — {sizes['length']} requests (first {sizes['warm_up']} not counted) over "
        f"{sizes['catalogue']} models, Zipf exponent {sizes['exponent']}, {sizes['clients']} concurrent clients; "
        f"{results['distinct_models_in_trace']} distinct models in the trace. Offline LRU with room for {capacity}: "
        f"hit ratio {results['lru_offline_one']:.3f}. Machine: {results['machine']['cpus']} CPUs; "
        "all replicas share it.",
        "",
        "| set-up | hit ratio | misses | S3 downloads (all) | loads into MMS (all) | p50 ms | p99 ms | req/s | "
        "statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, row in rows:
        lines.append(
            f"| {label} | {row['hit_ratio']:.3f} | {row['counters']['misses']} | {row['downloads_total']} | "
            f"{row['registrations_total']} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['throughput_rps']:.1f} | {json.dumps(row['statuses'])} |"
        )
    lines += ["", note(results), END]
    return "\n".join(lines) + "\n"


def note(results: dict[str, Any]) -> str:
    one, hashed, spread = results["one"], results["hashed"], results["round_robin"]
    per_replica = results["sizes"]["capacity"] // REPLICAS
    return (
        f"What it shows: hashed on the TargetModel, the three replicas hold disjoint sets of models, so three caches "
        f"of {per_replica} behave nearly like one cache of {results['sizes']['capacity']}: aggregate hit ratio "
        f"{hashed['hit_ratio']:.3f} against {one['hit_ratio']:.3f} for the single replica, and "
        f"{hashed['downloads_total']} downloads from S3 against {one['downloads_total']}. What is left of the gap is "
        "the ring's imbalance (a replica whose share of the popular models is larger than its room misses more while "
        "another has room to spare) and concurrent clients reordering requests. Round robin puts every popular model "
        f"on every replica, so each replica is a cache of {per_replica} for the whole catalogue: hit ratio "
        f"{spread['hit_ratio']:.3f}, {spread['downloads_total']} downloads and {spread['registrations_total']} loads "
        "into MMS. All replicas run on this one machine here, so latency and throughput compare contention for the "
        "same cores, not capacity; on separate machines the hashed set-up also has three times the CPU."
    )


def main() -> int:
    return section_main("scale_out", __doc__ or "", (FULL, SMOKE), run, markdown, (START, END))


if __name__ == "__main__":
    sys.exit(main())
