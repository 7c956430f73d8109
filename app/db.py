"""Engine, sessions and the declarative base shared by the web app, workers and CLI."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    JSON,
    BindParameter,
    ClauseElement,
    DateTime,
    Executable,
    MetaData,
    String,
    bindparam,
    create_engine,
    event,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnClause
from sqlalchemy.types import TypeDecorator

from config import Settings
from config.topology import POOL_OVERFLOW, POOL_SIZE

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A ``timestamptz`` that takes only aware datetimes and hands back UTC ones.

    A naive datetime is refused rather than guessed at; values read come back in
    ``datetime.UTC``, whatever fixed offset the driver attached.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        return None if value is None else value.astimezone(dt.UTC)


def unnest(name: str, *columns: ColumnClause[Any]) -> Any:
    """Rows passed as one array per column (Postgres), each bound as ``<column>s``: the
    statement has one shape whatever the batch's size, so SQLAlchemy compiles it once, where
    VALUES rows compiled it anew for every batch."""
    arrays = [bindparam(f"{c.name}s", type_=ARRAY(c.type)) for c in columns]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=name)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


def make_engine(url: str, *, pre_ping: bool = True, **kwargs: Any) -> Engine:
    kwargs.setdefault("pool_size", POOL_SIZE)
    kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    engine = create_engine(url, pool_pre_ping=pre_ping, **kwargs)
    event.listen(engine, "connect", _postgres_utc)
    return engine


def _postgres_utc(dbapi_connection: Any, _record: Any) -> None:
    # Day boundaries (usage reports) and date() are UTC whatever the server's or the
    # client's (PGTZ) timezone says; an explicit SET wins over both.
    cursor = dbapi_connection.cursor()
    cursor.execute("SET TIME ZONE 'UTC'")
    cursor.close()
    dbapi_connection.commit()


def database_url(settings: Settings) -> str:
    """The URL to connect to; the embedded server's must have been filled in by then."""
    if settings.database_url is None:
        raise RuntimeError(
            "no database: set DATABASE_URL, or start Chorus with `chorus dev`, which runs "
            "the embedded PostgreSQL and hands its URL to the processes it starts"
        )
    return settings.database_url


def direct_database_url(settings: Settings) -> str:
    """The URL of PostgreSQL itself, for what must keep a session of its own.

    Behind PgBouncer in transaction mode (DATABASE_URL the pooler's, DATABASE_DIRECT_URL the
    server's), each transaction may run on another server connection, so what lives in a
    session stays on this URL: the scheduler's advisory lock and its LISTEN, and migrations.
    Everything else goes through the pooler, which keeps of a session only what it tracks
    itself: ``SET TIME ZONE`` on connect (``_postgres_utc``) is one of those parameters,
    replayed on each server connection a client is given. psycopg2 never prepares statements
    on the server by itself (SQLAlchemy's psycopg2 dialect sends plain text queries); the
    only PREPAREs are the HotStatements', off by default when DATABASE_DIRECT_URL is set
    (DATABASE_PREPARE).
    """
    return settings.database_direct_url or database_url(settings)


class Database:
    """One engine and session factory per process, created lazily (fork-safe)."""

    def __init__(self, settings: Settings, *, pre_ping: bool = True) -> None:
        self.settings = settings
        # A ping before each checkout survives a database restart unnoticed, at the price of
        # one round trip per transaction. Workers keep it; the API drops it and answers 503
        # for the one request per connection that finds the restart (the pool is then renewed).
        self.pre_ping = pre_ping
        self._engine: Engine | None = None
        self._reader: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(
                database_url(self.settings), pre_ping=self.pre_ping, **self._pool_sizes()
            )
        return self._engine

    @property
    def reader(self) -> Engine:
        """An engine whose connections autocommit, for reads that are one statement.

        A lone SELECT needs no transaction: in autocommit it is one round trip, where the
        pooled transactional connection adds a BEGIN before it and a ROLLBACK at checkin.
        Its own pool, so no connection switches mode between uses.
        """
        if self._reader is None:
            self._reader = make_engine(
                database_url(self.settings),
                pre_ping=self.pre_ping,
                isolation_level="AUTOCOMMIT",
                # Nothing to roll back on an autocommit connection given back to the pool.
                pool_reset_on_return=None,
                execution_options={PREPARE_OPTION: self.settings.database_prepare},
                **self._pool_sizes(),
            )
        return self._reader

    def _pool_sizes(self) -> dict[str, int]:
        """DATABASE_POOL_IDLE kept open when idle; the most open at once stays the same."""
        idle = min(self.settings.database_pool_idle, POOL_SIZE + POOL_OVERFLOW)
        return {"pool_size": idle, "max_overflow": POOL_SIZE + POOL_OVERFLOW - idle}

    def session(self) -> Session:
        if self._sessions is None:
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Drop pooled connections; called in forked children, which must not share sockets."""
        for engine in (self._engine, self._reader):
            if engine is not None:
                engine.dispose(close=False)


# An engine's execution option: its HotStatements are prepared on the server (DATABASE_PREPARE).
PREPARE_OPTION = "chorus_prepare"
# SQLSTATEs of a prepared statement the connection does not (or already) have.
_NOT_PREPARED, _ALREADY_PREPARED = "26000", "42P05"


class _Compiled(NamedTuple):
    sql: str
    defaults: dict[str, Any]
    processors: dict[str, Callable[[Any], Any]]
    prepare: str  # PREPARE name (types) AS the statement, parameters by position
    execute: str  # EXECUTE name (the parameters)


class HotStatement:
    """A prebuilt statement for the API's hottest paths, run straight on a DBAPI cursor.

    On the API's commonest requests, SQLAlchemy's per-execution machinery (the Connection and
    its execution context, the compiled-cache lookup, result metadata) costs more Python
    time than the statement's own round trip. On psycopg2 this compiles the statement once
    with SQLAlchemy's compiler and keeps the parameters' bind processors (JSON and the like),
    then runs each call on a pooled connection's cursor. Its rows are named tuples of what
    the driver returns: on Postgres, aware datetimes in the session's UTC (set on connect)
    and decoded JSON, as the columns' types would give. On another driver it is an ordinary
    execution.

    Where the engine has ``PREPARE_OPTION``, the statement is also prepared on the server,
    once per connection, and run with EXECUTE: Postgres then neither parses nor plans it
    again, which for a read joining the key and the job was most of its CPU. A connection
    that lost it (a pooler's reset) prepares it again. Not behind a pooler in transaction
    mode, where the next transaction may be on another server connection.

    ``column_keys`` names an INSERT's columns when the statement has no ``values()``.
    """

    _names = itertools.count(1)

    def __init__(self, statement: Executable, *, column_keys: Sequence[str] | None = None):
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self.name = f"chorus_hot_{next(self._names)}"
        self._compiled: dict[int, _Compiled] = {}
        # Both filled on first use; a race between threads only does that work twice.
        self._row: Any = None  # the named tuple of its rows

    def first(self, engine: Engine, params: dict[str, Any]) -> Any | None:
        """The statement's first row (None for none), on a connection of ``engine``; with an
        autocommit engine the statement is its own transaction."""
        if engine.dialect.driver != "psycopg2":
            with engine.connect() as conn:
                return conn.execute(self.statement, params).first()
        compiled = self._compile(engine.dialect)
        values = {**compiled.defaults, **params}
        for name, process in compiled.processors.items():
            values[name] = process(values[name])
        prepare = engine.get_execution_options().get(PREPARE_OPTION, False)
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                if prepare:
                    self._execute_prepared(cursor, connection.info, compiled, values)
                else:
                    cursor.execute(compiled.sql, values)
                row = cursor.fetchone() if cursor.description else None
                if row is not None and self._row is None:
                    self._row = namedtuple("HotRow", [c[0] for c in cursor.description])  # type: ignore[misc]
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as exc:
            # As SQLAlchemy's own execution would: a lost connection leaves the pool, and the
            # error is its DBAPIError (the app answers 503 when the connection is gone).
            lost = engine.dialect.is_disconnect(exc, connection.dbapi_connection, None)
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql,
                values,
                exc,
                engine.dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=engine.dialect,
            ) from exc
        finally:
            connection.close()
        return None if row is None else self._row._make(row)

    def _execute_prepared(
        self, cursor: Any, info: dict[Any, Any], compiled: _Compiled, values: dict[str, Any]
    ) -> None:
        # ``info`` lives as long as the DBAPI connection: a new connection starts empty.
        prepared: set[str] = info.setdefault(PREPARE_OPTION, set())
        for attempt in (1, 2):
            if self.name not in prepared:
                try:
                    cursor.execute(compiled.prepare)
                except Exception as exc:
                    if getattr(exc, "pgcode", None) != _ALREADY_PREPARED:
                        raise
                prepared.add(self.name)
            try:
                cursor.execute(compiled.execute, values)
                return
            except Exception as exc:
                # In autocommit a failed statement leaves no transaction to roll back.
                if attempt == 2 or getattr(exc, "pgcode", None) != _NOT_PREPARED:
                    raise
                prepared.discard(self.name)

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(id(dialect))
        if compiled is None:
            done = cast(
                SQLCompiler,
                cast(ClauseElement, self.statement).compile(
                    dialect=dialect, column_keys=self.column_keys
                ),
            )
            processors: dict[str, Callable[[Any], Any]] = {}
            for name, bind in done.binds.items():
                process = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors[name] = process
            # Values the statement carries itself (literals in its WHERE, say).
            defaults = {
                name: bind.value
                for name, bind in done.binds.items()
                if not bind.required and bind.value is not None
            }
            sql = str(done)
            compiled = _Compiled(sql, defaults, processors, *self._prepared_forms(done, sql))
            self._compiled[id(dialect)] = compiled
        return compiled

    def _prepared_forms(self, done: SQLCompiler, sql: str) -> tuple[str, str]:
        """PREPARE and EXECUTE for ``sql`` (pyformat): each named parameter becomes $n, typed
        as its bind's type so that Postgres infers nothing."""
        order: list[str] = []

        def position(match: re.Match[str]) -> str:
            if match.group(1) not in order:
                order.append(match.group(1))
            return f"${order.index(match.group(1)) + 1}"

        body = re.sub(r"%\((\w+)\)s", position, sql).replace("%%", "%")

        def type_of(bind: BindParameter[Any]) -> str:
            # A string's length is the column's business: the statement itself refuses what
            # does not fit, as it would unprepared.
            kind = String() if isinstance(bind.type, String) else bind.type
            return done.dialect.type_compiler_instance.process(kind)

        types = ", ".join(type_of(done.binds[name]) for name in order)
        arguments = ", ".join(f"%({name})s" for name in order)
        return (
            f"PREPARE {self.name} ({types}) AS {body}",
            f"EXECUTE {self.name} ({arguments})" if order else f"EXECUTE {self.name}",
        )
