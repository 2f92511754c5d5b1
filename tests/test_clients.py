"""open_clients: one start-up builds each client once and closes all of them at the end."""

from __future__ import annotations

import asyncio

import pytest
from aio_pika.exceptions import AMQPError
from sqlalchemy import text

from services.common import events
from services.common.clients import (
    REDIS_CONNECT_TIMEOUT_S,
    REDIS_SOCKET_TIMEOUT_S,
    open_clients,
    redis_client,
    sync_redis_client,
)
from services.common.redis_extras import extras_client
from services.common.settings import Settings


def test_each_client_is_built_once_and_closed_when_the_block_ends(settings: Settings) -> None:
    async def main() -> None:
        async with open_clients(settings, "test") as clients:
            bus = await clients.bus()
            assert await clients.bus() is bus
            redis = clients.redis()
            assert clients.redis() is redis
            assert await redis.ping()
            redis_id = await redis.client_id()
            engine = await clients.engine()
            assert await clients.engine() is engine
            with engine.connect() as conn:
                assert conn.execute(text("select 1")).scalar() == 1
            closed: list[str] = []

            async def close_extra() -> None:
                closed.append("extra")

            clients.closing(close_extra)
            assert clients.names.ns == settings.namespace
        assert closed == ["extra"]
        assert bus.connection.is_closed
        other = redis_client(settings.redis_url)
        try:  # the server no longer knows the connection: the client really closed it
            assert await other.execute_command("CLIENT", "LIST", "ID", redis_id) in ("", b"")
        finally:
            await other.aclose()

    asyncio.run(main())


def test_a_failed_connection_raises_and_is_tried_again_next_time(settings: Settings) -> None:
    down = settings.model_copy(update={"amqp_url": "amqp://guest:guest@127.0.0.1:1/"})

    async def main() -> None:
        async with open_clients(down, "test") as clients:
            for _ in range(2):  # not kept: the second call connects again (and fails again)
                with pytest.raises((AMQPError, OSError)):
                    await clients.bus()

    asyncio.run(main())


@pytest.mark.parametrize("make", [redis_client, extras_client, sync_redis_client])
def test_every_redis_client_has_the_one_timeout_policy(make: object) -> None:
    assert callable(make)
    client = make("redis://127.0.0.1:6379/0")
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (
        REDIS_SOCKET_TIMEOUT_S, REDIS_CONNECT_TIMEOUT_S)


def test_strict_events_setting_turns_strictness_on(settings: Settings) -> None:
    async def main() -> None:
        async with open_clients(settings.model_copy(update={"strict_events": True}), "test"):
            with pytest.raises(events.EventContractError):
                events.checked("task.dead", {})

    try:
        asyncio.run(main())
    finally:
        events.set_strict(False)
