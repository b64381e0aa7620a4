"""A throwaway redis-server per test: real Redis, no mocks, nothing persisted.

The server can be killed and restarted on the same port, so tests can take
Redis away from a running gateway and give it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 10.0


def text(value: object) -> str:
    """A reply of the ``decode_responses=True`` client, as the str it is."""
    assert isinstance(value, str), value
    return value


async def command(client: aioredis.Redis, *args: str) -> Any:
    # Through a typed alias: redis-py annotates execute_command in some
    # versions only, and a `type: ignore` would be wrong on the others.
    run: Callable[..., Awaitable[Any]] = client.execute_command
    return await run(*args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = _free_port()
        if port <= 55535:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    directory: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    config_file: Path | None = None  # sentinel mode needs one (it rewrites it)
    extra: tuple[str, ...] = ()  # more redis-server options, e.g. --cluster-enabled yes

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        assert self.process is None, "already running"
        log = (self.directory / "redis.log").open("ab")
        config = [str(self.config_file)] if self.config_file is not None else []
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                *config,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                *self.extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the clients see their connections reset, as in a crash."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Start again on the same port (the data is gone: nothing is persisted)."""
        self.kill()
        self.start()


def require_redis_server() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (CI installs it: apt-get install redis-server)")


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pasted_thumbprints(thumbprint: str) -> dict[str, str]:
    """A thumbprint the ways operators paste it, by where it came from."""
    pairs = [thumbprint[i : i + 2] for i in range(0, len(thumbprint), 2)]
    return {
        "openssl": ":".join(pairs).upper(),  # openssl x509 -fingerprint -sha1
        "windows": " ".join(pairs),  # the certificate dialog's Thumbprint field
        "powershell": thumbprint.upper(),  # Get-ChildItem Cert:\ ... | Thumbprint
    }


# ------------------------------------------------------------------- sentinel

SENTINEL_MASTER = "mymaster"


def _command(port: int, *args: str) -> object:
    import redis

    with redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5) as r:
        return r.execute_command(*args)


@dataclass
class SentinelGroup:
    """One master, one replica, three sentinels, all on loopback."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        return tuple(("127.0.0.1", s.port) for s in self.sentinels)

    def master_port(self, sentinel: int = 0) -> int:
        reply = _command(
            self.sentinels[sentinel].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER
        )
        assert isinstance(reply, list)
        return int(reply[1])

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """A manual failover (SENTINEL FAILOVER); returns the new master once it is complete.

        Complete means what clients act on: ``SENTINEL MASTERS`` (redis-py's
        discover_master) names the new node.  GET-MASTER-ADDR-BY-NAME names it
        earlier, while the failover is still reconfiguring replicas.
        """
        old = self.master_port()
        promoted = self.replica if old == self.master.port else self.master
        _command(self.sentinels[0].port, "SENTINEL", "FAILOVER", SENTINEL_MASTER)
        deadline = time.monotonic() + timeout
        while True:
            state = _command(self.sentinels[0].port, "SENTINEL", "MASTER", SENTINEL_MASTER)
            assert isinstance(state, dict)
            if int(state["port"]) == promoted.port and "failover" not in str(state["flags"]):
                return promoted
            assert time.monotonic() < deadline, f"the failover never completed: {state}"
            time.sleep(0.02)


def _replica_linked(replica: RedisServer) -> bool:
    info = _command(replica.port, "INFO", "replication")
    return isinstance(info, dict) and info.get("master_link_status") == "up"


def _sentinel_sees(sentinel: RedisServer, replica: RedisServer, others: int) -> bool:
    replicas = _command(sentinel.port, "SENTINEL", "REPLICAS", SENTINEL_MASTER)
    peers = _command(sentinel.port, "SENTINEL", "SENTINELS", SENTINEL_MASTER)
    assert isinstance(replicas, list) and isinstance(peers, list)
    known = [r for r in replicas if isinstance(r, dict) and str(r.get("port")) == str(replica.port)]
    return bool(known) and "s_down" not in known[0].get("flags", "") and len(peers) >= others


@pytest.fixture
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    require_redis_server()
    master = RedisServer(tmp_path_factory.mktemp("master"))
    replica = RedisServer(tmp_path_factory.mktemp("replica"))
    replica.extra = ("--replicaof", "127.0.0.1", str(master.port))
    started: list[RedisServer] = []
    try:
        for server in (master, replica):
            server.start()
            started.append(server)
        sentinels = []
        for _ in range(3):
            directory = tmp_path_factory.mktemp("sentinel")
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 5000\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} 15000\n"
            )
            node = RedisServer(directory, config_file=conf, extra=("--sentinel",))
            node.start()
            started.append(node)
            sentinels.append(node)
        group = SentinelGroup(master, replica, sentinels)
        deadline = time.monotonic() + 30
        while not (
            _replica_linked(replica) and all(_sentinel_sees(s, replica, 2) for s in sentinels)
        ):
            assert time.monotonic() < deadline, "the sentinels never saw the replica and each other"
            time.sleep(0.1)
        yield group
    finally:
        for server in reversed(started):
            server.stop()
