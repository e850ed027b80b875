"""The generated router's routing rules on real nginx, against stand-in replicas that answer with their own port
(a second nginx): a model sticks to one replica, a hot model spreads over several, requests without the header
spread over all, and a replica that is down is skipped without an error."""

from __future__ import annotations

import os
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from openmme.ports import free_ports
from openmme.router import HEADER, RouterOptions, nginx_config
from tests.support import Nginx, needs_nginx

pytestmark = needs_nginx

HOT = "hot/model.tar.gz"


def stand_ins(workdir: Path, ports: list[int]) -> str:
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 '{port}'; }} }}" for port in ports
    )
    return (
        f"worker_processes 1; pid {workdir}/nginx.pid; error_log {workdir}/error.log;\n"
        f"events {{}}\nhttp {{\n  access_log off;\n{servers}\n}}\n"
    )


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    listen, *ports = free_ports(5)
    live = ports[:3]  # the last replica in the router's list never starts: it is down throughout
    options = RouterOptions(
        listen=f"127.0.0.1:{listen}",
        worker_processes="1",
        prefix_paths=str(tmp_path / "router"),
        user="root" if os.geteuid() == 0 else None,
        hot_models=(HOT,),
        hot_spread=3,
        tries=4,
    )
    replicas = [f"127.0.0.1:{port}" for port in ports]
    started: list[Nginx] = []
    try:
        started.append(Nginx(tmp_path / "replicas", stand_ins(tmp_path / "replicas", live), live[0]))
        started.append(Nginx(tmp_path / "router", nginx_config(replicas, options), listen))
        yield started[-1].url, live
    finally:
        for nginx in started:
            nginx.stop()


def answered_by(url: str, model: str | None, count: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(count):
        headers = {HEADER: model} if model else {}
        request = urllib.request.Request(url + "/invocations", data=b"1,2", headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            seen[int(response.read())] += 1
    return seen


def test_models_stick_hot_models_spread_and_headerless_requests_spread(router: tuple[str, list[int]]) -> None:
    url, live = router
    owners = set()
    for index in range(30):
        seen = answered_by(url, f"m{index}/model.tar.gz", 5)
        assert len(seen) == 1, seen  # every request for a model goes to one replica, even past a dead one
        owners |= set(seen)
    assert owners == set(live)
    # A hot model's requests are hashed on "<model>#<slot>": they reach exactly the owners of those three keys.
    slot_owners = {next(iter(answered_by(url, f"{HOT}#{slot}", 1))) for slot in range(3)}
    assert set(answered_by(url, HOT, 90)) == slot_owners
    assert set(answered_by(url, None, 60)) == set(live)
