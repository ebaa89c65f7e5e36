"""Shared fixtures: a clean OTel environment, real OTLP receivers, rotel, child processes.

When a test fails, the output of every process and a summary of every receiver it used are
attached to the report, so a failure explains itself without a rerun.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Protocol

import pytest
from support.otlp_receiver import OtlpReceiver
from support.process import BridgeProcess
from support.rotel import RotelCollector


class _Describable(Protocol):
    def describe(self) -> str: ...


_USED = pytest.StashKey[list[tuple[str, _Describable]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run tests marked `long` (soak, fault storms)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--long"):
        return
    skip_long = pytest.mark.skip(reason="long test; run with --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip_long)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Sections must be added before the report is built, i.e. before the yield.
    if call.excinfo is not None and not call.excinfo.errisinstance(pytest.skip.Exception):
        for title, used in item.stash.get(_USED, []):
            item.add_report_section(call.when, title, used.describe())
    return (yield)


def _register(request: pytest.FixtureRequest, title: str, used: _Describable) -> None:
    request.node.stash.setdefault(_USED, []).append((title, used))


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's or CI's OTEL_* settings."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def grpc_receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """A running OTLP/gRPC receiver on 127.0.0.1 (see `endpoint`)."""
    with OtlpReceiver("grpc") as receiver:
        _register(request, "grpc receiver", receiver)
        yield receiver


@pytest.fixture
def http_receiver(request: pytest.FixtureRequest) -> Iterator[OtlpReceiver]:
    """A running OTLP/HTTP receiver on 127.0.0.1 (see `endpoint` and `metrics_url`)."""
    with OtlpReceiver("http") as receiver:
        _register(request, "http receiver", receiver)
        yield receiver


@pytest.fixture
def rotel_collector(
    request: pytest.FixtureRequest, grpc_receiver: OtlpReceiver
) -> Iterator[RotelCollector]:
    """rotel listening on OTLP gRPC+HTTP and forwarding over gRPC to `grpc_receiver`."""
    collector = RotelCollector.forwarding_to(grpc_receiver)
    _register(request, "rotel", collector)
    with collector.start():
        yield collector


@pytest.fixture
def rotel_debug_collector(request: pytest.FixtureRequest) -> Iterator[RotelCollector]:
    """rotel that drops what it receives and prints every metric on its stdout."""
    collector = RotelCollector.debug()
    _register(request, "rotel (debug)", collector)
    with collector.start():
        yield collector


@pytest.fixture
def spawn_bridge(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., BridgeProcess]]:
    """Start a `BridgeProcess(argv, env=..., cwd=...)`; anything left running is killed."""
    started: list[BridgeProcess] = []

    def spawn(
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        name: str = "bridge",
    ) -> BridgeProcess:
        process = BridgeProcess(argv, env=env, cwd=cwd, name=name)
        started.append(process)
        _register(request, f"{name} #{len(started)}", process)
        return process.start()

    yield spawn
    for process in started:
        process.close()
