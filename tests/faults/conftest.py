"""The fault suite: every scenario runs against a RabbitMQ node and a Redis of the suite's
own (started once per session on free ports, torn down at the end), so stopping, pausing or
wiping them never touches the shared services. `pytest -m faults` runs it alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FIGURES, FaultPipeline, fault_pipeline
from tests.faults.servers import OwnRabbit, OwnRedis


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (tests/faults), against a "
                                       "broker and a Redis of its own")
    config.addinivalue_line("markers", "stack(**options): options of the `faulty` pipeline")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault suite figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def own_rabbit() -> Iterator[OwnRabbit]:
    node = OwnRabbit()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def faulty(tmp_path: Path, own_rabbit: OwnRabbit, own_redis: OwnRedis,
           request: pytest.FixtureRequest) -> Iterator[FaultPipeline]:
    """A fresh pipeline on the suite's broker and Redis (options: `@pytest.mark.stack(...)`)."""
    marker = request.node.get_closest_marker("stack")
    options = dict(marker.kwargs) if marker else {}
    with fault_pipeline(tmp_path, own_rabbit, own_redis, **options) as running:
        yield running
