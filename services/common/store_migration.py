"""Migrate a results store made when task ids were global: key the tasks table by (tenant, id).

Each service runs this at start-up; the first one to take the table's lock migrates it, the
others find it done. PostgreSQL swaps the primary key in place; SQLite cannot alter a key,
so the table is rebuilt in one transaction.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy import Engine, Table, inspect, text
from sqlalchemy.schema import CreateIndex, CreateTable

log = logging.getLogger(__name__)

OLD_KEY = ["id"]


def _quote(engine: Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


def needs_migration(engine: Engine, table: Table) -> bool:
    """Return whether the table exists with the old primary key, `id` alone."""
    inspector = inspect(engine)
    if not inspector.has_table(table.name):
        return False
    return list(inspector.get_pk_constraint(table.name)["constrained_columns"]) == OLD_KEY


def key_by_tenant(engine: Engine, table: Table) -> bool:
    """Make (tenant, id) the table's primary key if it is `id` alone; return whether it was."""
    if not needs_migration(engine, table):
        return False
    if engine.dialect.name == "postgresql":
        done = _postgresql(engine, table)
    elif engine.dialect.name == "sqlite":
        done = _sqlite(engine, table)
    else:
        raise NotImplementedError(f"cannot migrate {table.name} on {engine.dialect.name}: "
                                  "make (tenant, id) its primary key by hand")
    if done:
        log.warning("migrated %s: its primary key is now (tenant, id)", table.name)
    return done


def _postgresql(engine: Engine, table: Table) -> bool:
    name = _quote(engine, table.name)
    with engine.begin() as conn:
        conn.execute(text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
        key = inspect(conn).get_pk_constraint(table.name)
        if list(key["constrained_columns"]) != OLD_KEY:  # another service was first
            return False
        constraint = _quote(engine, key["name"] or f"{table.name}_pkey")
        conn.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {constraint}, "
                          "ADD PRIMARY KEY (tenant, id)"))
        for index in table.indexes:
            conn.execute(CreateIndex(index, if_not_exists=True))
    return True


def _sqlite_columns(cursor: sqlite3.Cursor, name: str) -> list[tuple[str, int]]:
    return [(row[1], row[5]) for row in cursor.execute(f'PRAGMA table_info("{name}")')]


def _sqlite(engine: Engine, table: Table) -> bool:
    raw = engine.raw_connection()
    try:
        connection: Any = raw.driver_connection
        saved = connection.isolation_level
        # pysqlite would commit before each DDL statement: run the transaction by hand.
        connection.isolation_level = None
        cursor = connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")  # the other services wait here
            return _sqlite_rebuild(engine, cursor, table)
        except BaseException:
            if connection.in_transaction:
                cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
            connection.isolation_level = saved
    finally:
        raw.close()


def _sqlite_rebuild(engine: Engine, cursor: sqlite3.Cursor, table: Table) -> bool:
    columns = _sqlite_columns(cursor, table.name)
    if [column for column, pk in columns if pk] != OLD_KEY:
        cursor.execute("ROLLBACK")
        return False
    old = f"{table.name}_pre_tenant_key"
    indexes = [row[0] for row in cursor.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table.name,))]
    for index_name in indexes:  # their names are taken again by the new table's indexes
        cursor.execute(f'DROP INDEX "{index_name}"')
    cursor.execute(f'ALTER TABLE "{table.name}" RENAME TO "{old}"')
    cursor.execute(str(CreateTable(table).compile(dialect=engine.dialect)))
    for index in table.indexes:
        cursor.execute(str(CreateIndex(index).compile(dialect=engine.dialect)))
    kept = ", ".join(f'"{column}"' for column, _ in columns if column in table.c)
    cursor.execute(f'INSERT INTO "{table.name}" ({kept}) SELECT {kept} FROM "{old}"')
    cursor.execute(f'DROP TABLE "{old}"')
    cursor.execute("COMMIT")
    return True
