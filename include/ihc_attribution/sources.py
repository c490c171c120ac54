"""The source tables as every query reads them (``$ATTRIBUTION_SOURCES``), with the challenge's names and types.

:func:`table` gives a query the source to read: by default the plain table name (found through the
``search_path``: the SQL and its plans are those of the challenge schema); else the quoted table in
its schema, or a subquery giving the challenge's column names and the types the pipeline reads:
``YYYY-MM-DD`` and ``HH:MM:SS`` text in UTC from one ``TIMESTAMP``/``TIMESTAMPTZ`` column (or a
``TIMESTAMP`` date, a ``TIME WITH TIME ZONE`` time), ``REAL`` money by its shortest decimal,
``BOOLEAN`` flags as 0/1.
"""

from __future__ import annotations

import re
import sqlite3
import weakref
from dataclasses import dataclass
from typing import Any

from ihc_attribution import settings
from ihc_attribution.errors import PermanentError

SESSION_SOURCES, CONVERSIONS, SESSION_COSTS = settings.SOURCE_COLUMNS
SOURCE_TABLES = (SESSION_SOURCES, CONVERSIONS, SESSION_COSTS)


class SourceTableError(PermanentError, RuntimeError):
    """A source table cannot be read: a wrong path, schema, name, column or type."""


@dataclass
class Source:
    name: str
    #: The relation in SQL: the plain name, or the quoted (schema-qualified) table.
    ref: str
    schema: str | None
    table: str
    #: Column (challenge name) -> its SQL over ``ref``: the plain name, the quoted column, or a derivation.
    select: dict[str, str]
    #: Column -> the type the queries read it as, in PostgreSQL's lower-case spelling (None unknown).
    types: dict[str, str | None]
    #: Column -> the table's column it is read from unchanged; None for a derived one.
    physical: dict[str, str | None]
    problems: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        return all(expr == column for column, expr in self.select.items())

    def describe(self) -> str:
        where = self.table if self.schema is None else f"{self.schema}.{self.table}"
        return self.name if where == self.name else f"{self.name} ({where})"

    def derive(self, column: str, expr: str, kind: str = "text") -> None:
        """Read ``column`` as ``expr`` over the table's columns, of type ``kind``."""
        self.select[column], self.types[column], self.physical[column] = expr, kind, None


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_resolved: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def source(db: Any, name: str) -> Source:
    """The source ``name`` of ``db`` (a :class:`Database` or the report pages' connection), resolved once per
    connection and settings."""
    try:
        specs = settings.source_tables()
    except ValueError as exc:
        raise SourceTableError(str(exc)) from None
    resolved = _resolved.setdefault(db, {})
    key = (repr(sorted(specs.items())), name)
    if key not in resolved:
        resolved[key] = _resolve(db, name, specs.get(name))
    return resolved[key]


def _resolve(db: Any, name: str, spec: dict | None) -> Source:
    schema_name, table_name = (spec["schema"], spec["table"]) if spec else (None, name)
    ref = name if spec is None else (quote(table_name) if schema_name is None else f"{quote(schema_name)}.{quote(table_name)}")
    declared = catalog(db, ref, schema_name, table_name)
    mapped = dict(spec["columns"]) if spec else {}
    physical: dict[str, str | None] = {column: mapped.get(column, column) for column in settings.SOURCE_COLUMNS[name]}
    src = Source(name, ref, schema_name, table_name, select={c: c if own == c else quote(own) for c, own in physical.items()},
                 types={c: _type_of(db, declared, own) for c, own in physical.items()}, physical=physical)
    key, date_column, time_column = settings.SOURCE_TIMESTAMPS.get(name, (None, "", ""))
    stamp = (_type_of(db, declared, mapped[key]) or "") if key in mapped else None
    if stamp is not None:  # date and time from one timestamp column, in UTC
        column = quote(mapped[key])
        utc = f"({column} AT TIME ZONE 'UTC')" if "with time zone" in stamp else column
        src.derive(date_column, f"date({column})" if db.is_sqlite else f"to_char({utc}, 'YYYY-MM-DD')")
        src.derive(time_column, f"time({column})" if db.is_sqlite else f"to_char({utc}, 'HH24:MI:SS')")
    wanted = [c for c in physical.values() if c is not None] + ([mapped[key]] if stamp is not None else [])
    src.missing = tuple(c for c in wanted if declared and _type_of(db, declared, c) is None)
    if declared and not src.missing and db.is_sqlite:
        _convert_sqlite(src)
    elif declared and not src.missing:
        src.problems = tuple(_convert_postgres(src, stamp))
    return src


def catalog(db: Any, ref: str, schema_name: str | None, table_name: str) -> dict[str, str]:
    """The columns of a relation and their declared types (lower case); {} when it is not found."""
    if db.is_sqlite:  # names lower case: SQLite matches them in any case
        prefix = "" if schema_name is None else f"{quote(schema_name)}."
        try:
            return {str(r[1]).lower(): str(r[2]).lower() for r in db.query(f"PRAGMA {prefix}table_info({quote(table_name)})")}
        except sqlite3.Error:  # no database of that name: check() says so, reading it
            return {}
    return {
        str(n): str(t).lower()
        for n, t in db.query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped",
            (ref,),
        )
    }


def _type_of(db: Any, declared: dict[str, str], column: str) -> str | None:
    return declared.get(column.lower() if db.is_sqlite else column)


_KINDS = {
    "session_id": "id", "user_id": "id", "conv_id": "id", "event_date": "date", "conv_date": "date",
    "event_time": "time", "conv_time": "time", "channel_name": "text", "holder_engagement": "flag",
    "closer_engagement": "flag", "impression_interaction": "flag", "revenue": "money", "cost": "money",
}
_TEXT = ("text", "character varying", "character", "varchar", "char")
_INTEGER = ("smallint", "integer", "bigint")
#: Kind of column -> the PostgreSQL types it is read as it is, and what an error asks for.
_READ_AS_IS = {
    "id": (_TEXT + _INTEGER + ("numeric",), "text, VARCHAR or an integer type"),
    "date": (("date",) + _TEXT, "DATE, text or TIMESTAMP (TIMESTAMPTZ)"),
    "time": (("time without time zone",) + _TEXT, "TIME, text or TIME WITH TIME ZONE"),
    "text": (_TEXT, "text or VARCHAR"),
    "flag": (_INTEGER + ("numeric",), "an integer type or BOOLEAN"),
    "money": (_INTEGER + ("numeric", "double precision"), "NUMERIC, REAL, DOUBLE PRECISION or an integer type"),
}


def _base(declared: str) -> str:
    """The type without its modifiers: ``numeric(12,2)`` is ``numeric``."""
    return re.sub(r"\(\d+(,\s*\d+)?\)", "", declared).strip()


def _convert_postgres(src: Source, stamp: str | None) -> list[str]:
    """Derive the columns whose type the queries cannot read as it is; return the unusable ones."""
    problems = []
    if stamp is not None and _base(stamp) not in ("timestamp without time zone", "timestamp with time zone"):
        problems.append(f"the timestamp column has type {stamp}; it must be TIMESTAMP or TIMESTAMPTZ")
    for column, declared in list(src.types.items()):
        if src.physical[column] is None or declared is None:
            continue
        kind, base = _KINDS[column], _base(declared)
        as_is, needed = _READ_AS_IS[kind]
        if base not in as_is and not _derive_postgres(src, column, kind, base):
            problems.append(f"column {src.physical[column]} ({column}) has type {declared}; it must be {needed}")
    return problems


def _derive_postgres(src: Source, column: str, kind: str, base: str) -> bool:
    own = src.select[column]
    if kind == "date" and base.startswith("timestamp"):
        utc = f"({own} AT TIME ZONE 'UTC')" if "with time zone" in base else own
        src.derive(column, f"to_char({utc}, 'YYYY-MM-DD')")
    elif kind == "time" and base == "time with time zone":
        date_column = settings.SOURCE_TIMESTAMPS[src.name][1]
        if _base(src.types[date_column] or "") != "date" or src.physical[date_column] is None:
            return False
        stamp = f"(({src.select[date_column]} + {own}) AT TIME ZONE 'UTC')"
        src.derive(date_column, f"to_char({stamp}, 'YYYY-MM-DD')")
        src.derive(column, f"to_char({stamp}, 'HH24:MI:SS')")
    elif kind == "money" and base == "real":  # its shortest decimal: 12345.67, not 12345.669921875
        src.derive(column, f"CAST(CAST({own} AS TEXT) AS DOUBLE PRECISION)", "double precision")
    elif kind == "flag" and base == "boolean":
        src.derive(column, f"CAST({own} AS INTEGER)", "integer")
    else:
        return False
    return True


def _convert_sqlite(src: Source) -> None:
    """SQLite's declared types are names only: a date declared TIMESTAMP or DATETIME, a time WITH TIME ZONE."""
    _, date_column, time_column = settings.SOURCE_TIMESTAMPS.get(src.name, (None, "", ""))
    if not date_column or src.physical[date_column] is None:
        return
    declared_time = src.types[time_column] or ""
    if "time zone" in declared_time or "timetz" in declared_time:
        stamp = f"{src.select[date_column]} || ' ' || {src.select[time_column]}"
        src.derive(date_column, f"date({stamp})")
        src.derive(time_column, f"time({stamp})")
    elif any(word in (src.types[date_column] or "") for word in ("timestamp", "datetime")):
        src.derive(date_column, f"date({src.select[date_column]})")


def table(db: Any, name: str) -> str:
    """The source ``name`` for a ``FROM`` clause that gives it an alias (``FROM {table} s``)."""
    src = source(db, name)
    if src.plain:
        return src.ref
    columns = ", ".join(expr if expr == column else f"{expr} AS {column}" for column, expr in src.select.items())
    return f"(SELECT {columns} FROM {src.ref})"


def relation(db: Any, name: str) -> str:
    """The source ``name`` for a ``FROM`` clause without an alias: its columns are ``name.column``."""
    body = table(db, name)
    return body if body == name else f"{body} AS {name}"


def column_type(db: Any, name: str, column: str) -> str:
    """The type the queries read ``name.column`` as (lower case; ``text`` for a derived date); "" unknown."""
    return source(db, name).types[column] or ""


def as_type_of(db: Any, expr: str, name: str, column: str) -> str:
    """``expr`` (text) cast to the type of a source's date column on PostgreSQL (unchanged on SQLite)."""
    if db.is_sqlite:
        return expr
    return f"CAST({expr} AS {column_type(db, name, column) or 'date'})"


def cast_to_column(db: Any, expr: str, name: str, column: str) -> str:
    """``expr`` (text) cast to an integer id column's type on PostgreSQL, as it compares with it."""
    declared = "" if db.is_sqlite else column_type(db, name, column)
    return f"CAST({expr} AS {declared})" if _base(declared) in _INTEGER + ("numeric",) else expr


def is_text_column(db: Any, name: str, column: str) -> bool:
    """Whether the column holds text (any value, also a malformed date) rather than a typed value."""
    return db.is_sqlite or _base(column_type(db, name, column)) in _TEXT


def text_id(db: Any, expr: str, name: str, column: str) -> str:
    """``expr`` (an id column of the source) as the package's tables hold ids (text)."""
    return expr if is_text_column(db, name, column) else f"CAST({expr} AS TEXT)"


def check(db: Any) -> None:
    """Raise a one-line :class:`SourceTableError` naming the table, the column and where it looked, when a
    source, one of its columns or a column's type is unusable."""
    for name in SOURCE_TABLES:
        src = source(db, name)
        try:
            with db.transaction():
                found = db.columns(src.ref)
        except PermanentError:
            raise
        except Exception as exc:
            raise SourceTableError(
                f"source table {src.describe()} cannot be read in {db.describe()}: {str(exc).splitlines()[0]} "
                "(check the attribution_db connection: path, database, schema or search_path; and ATTRIBUTION_SOURCES)"
            ) from exc
        # What the catalog did not find, or else what reading lacks (a temporary view's catalog says nothing).
        lower = {c.lower() for c in found}
        missing = list(src.missing) or [c for c in src.physical.values() if c is not None and c not in found
                                         and not (db.is_sqlite and c.lower() in lower)]
        if missing:
            raise SourceTableError(
                f"source table {src.describe()} in {db.describe()} has no column {', '.join(missing)}; "
                f"its columns are {', '.join(sorted(found))} (map yours in ATTRIBUTION_SOURCES)"
            )
        if src.problems:
            raise SourceTableError(
                f"source table {src.describe()} in {db.describe()}: {'; '.join(src.problems)} (ATTRIBUTION_SOURCES)"
            )


def _in_schema(src: Source, name: str) -> str:
    """``name`` (a pragma or ``sqlite_master``) in the SQLite database (schema) of the source."""
    return name if src.schema is None else f"{quote(src.schema)}.{name}"


def _pragma(src: Source, pragma: str, argument: str) -> str:
    return f"PRAGMA {_in_schema(src, pragma)}({argument})"


def _indexes(db: Any, src: Source) -> list[tuple[bool, int, str | None]]:
    """(unique and not partial, number of columns, first column) of each index of the source."""
    if not db.is_sqlite:
        return db.query(
            "SELECT i.indisunique AND i.indpred IS NULL, i.indnatts, a.attname FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass(?)",
            (src.ref,),
        )
    found = []
    for _, index, unique, _origin, partial in db.query(_pragma(src, "index_list", quote(src.table))):
        columns = [r[2] for r in db.query(_pragma(src, "index_info", quote(index)))]
        found.append((bool(unique and not partial), len(columns), columns[0] if columns else None))
    return found


def has_unique_key(db: Any, name: str, column: str) -> bool:
    """Whether the source's ``column`` alone is a primary key or carries a unique index (no NULL check): then
    no row is present twice, and queries skip the deduplication (exports and views often have none)."""
    src = source(db, name)
    own = src.physical[column]
    if own is None:
        return False
    if db.is_sqlite:  # an INTEGER primary key is the rowid itself: no index is listed for it
        pk = [(r[1], str(r[2]).upper()) for r in db.query(_pragma(src, "table_info", quote(src.table))) if r[5]]
        if pk == [(own, "INTEGER")]:
            return True
    return any(unique and n == 1 and first == own for unique, n, first in _indexes(db, src))


def has_index_on(db: Any, name: str, column: str) -> bool:
    """Whether an index of the source (or its primary key) starts with the table's column of ``column``."""
    src = source(db, name)
    own = src.physical[column]
    return own is not None and any(first == own for _, _, first in _indexes(db, src))


def is_view(db: Any, name: str) -> bool:
    """Whether the source is a view (its tables are indexed, if at all, where they live)."""
    src = source(db, name)
    if db.is_sqlite:
        return db.scalar(f"SELECT type FROM {_in_schema(src, 'sqlite_master')} WHERE name = ?", (src.table,)) == "view"
    return db.scalar("SELECT relkind FROM pg_class WHERE oid = to_regclass(?)", (src.ref,)) in ("v", "m")


def exists(db: Any, name: str) -> bool:
    """Whether the source is found (a table or view), without reading it (``db`` may be the report pages' connection)."""
    src = source(db, name)
    if db.is_sqlite:
        try:
            return bool(db.query(f"SELECT COUNT(*) FROM {_in_schema(src, 'sqlite_master')} "
                                 "WHERE type IN ('table', 'view') AND name = ?", (src.table,))[0][0])
        except sqlite3.Error:  # no database of that name
            return False
    return bool(db.query("SELECT COUNT(*) FROM (SELECT to_regclass(?) AS t) AS r WHERE t IS NOT NULL", (src.ref,))[0][0])
