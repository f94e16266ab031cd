"""Alembic environment for the warehouse.

Two ways in:
- ``warehouse.engine.migrate(engine)`` (the normal one) passes an open connection, already in
  a transaction, through ``config.attributes["connection"]``;
- the alembic CLI, for authoring revisions:
  ``ORDERHUB_WAREHOUSE_URL=sqlite:///var/dev.db alembic -c warehouse/migrations/alembic.ini
  revision --autogenerate -m "..."`` (the URL may also be set as ``sqlalchemy.url``).
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection

from warehouse.schema import UtcDateTime, metadata

config = context.config
target_metadata = metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Revisions must not import the live schema module (it changes; they must not), so the
    # UtcDateTime decorator is written as the plain column type it stands for.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        # SQLite cannot ALTER most things: autogenerate batch ("move and copy") operations there
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():  # joins the caller's transaction
            context.run_migrations()
        return

    from warehouse.engine import make_engine

    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = os.environ.get("ORDERHUB_WAREHOUSE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set ORDERHUB_WAREHOUSE_URL (or sqlalchemy.url) to the warehouse URL")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=os.environ.get("ORDERHUB_WAREHOUSE_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
