"""Flight search written with raw SQL on purpose, and still safe against injection.

Rules of this module:
1. User input only ever travels as a query *parameter* (`cursor.execute(sql, params)`): the driver
   sends it separately from the SQL text (PostgreSQL) or binds it (SQLite), so `' OR 1=1 --` is a
   string to compare with, never SQL.
2. The only things formatted into the SQL text are table and column names from this module's own
   constants (the partition table names and the ORDER BY whitelist), never anything from a request.

Partition pruning: a search for one kind reads one table; "any" is a UNION ALL of both.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import connection

from airline import labels
from airline.models import PARTITIONS, Airport, Kind

# ORDER BY whitelist: the request picks a key, never SQL text.
SORTS = {"departs": "departs_at, id", "price": "price_cents, departs_at",
         "-price": "price_cents DESC, departs_at"}
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class Query:
    """A validated search (the view turns request.GET into this; bad values become None)."""

    text: str = ""                 # free text: airport code, city or flight number
    origin: str = ""               # IATA code
    destination: str = ""
    day: dt.date | None = None
    kind: Kind | None = None       # None = both partitions
    max_price_cents: int | None = None
    sort: str = "departs"
    page: int = 1
    page_size: int = 25


@dataclass(frozen=True)
class Row:
    ref: str
    number: str
    kind: str
    origin: str
    origin_city: str
    destination: str
    destination_city: str
    departs_at: dt.datetime
    arrives_at: dt.datetime
    price_cents: int

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"

    @property
    def arrival_days_label(self) -> str:
        return labels.day_offset_label(labels.arrival_day_offset(self.departs_at, self.arrives_at))


def _partition_select(kind: Kind, q: Query, params: list[object]) -> str:
    table = PARTITIONS[kind]._meta.db_table
    airport = Airport._meta.db_table
    where = ["1=1"]
    if q.text:
        like = "%" + q.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(o.code = %s OR d.code = %s OR f.number = %s OR o.city LIKE %s ESCAPE '\\' "
                     "OR d.city LIKE %s ESCAPE '\\')")
        params += [q.text.upper(), q.text.upper(), q.text.upper(), like, like]
    if q.origin:
        where.append("o.code = %s")
        params.append(q.origin.upper())
    if q.destination:
        where.append("d.code = %s")
        params.append(q.destination.upper())
    if q.day is not None:
        start = dt.datetime.combine(q.day, dt.time.min, tzinfo=dt.UTC)
        where.append("f.departs_at >= %s AND f.departs_at < %s")
        # Adapted like the ORM does (SQLite stores naive UTC text), so text comparison is exact.
        adapt = connection.ops.adapt_datetimefield_value
        params += [adapt(start), adapt(start + dt.timedelta(days=1))]
    if q.max_price_cents is not None:
        where.append("f.price_cents <= %s")
        params.append(q.max_price_cents)
    return (f"SELECT '{kind.value}' AS part, f.id AS id, f.number AS number, "
            f"o.code AS ocode, o.city AS ocity, "
            f"d.code AS dcode, d.city AS dcity, f.departs_at AS departs_at, f.arrives_at AS arrives_at, "
            f"f.price_cents AS price_cents "
            f"FROM {table} f JOIN {airport} o ON o.id = f.origin_id "
            f"JOIN {airport} d ON d.id = f.destination_id "
            f"WHERE {' AND '.join(where)}")


def search(q: Query) -> tuple[list[Row], bool]:
    """Returns (rows of this page, whether there is a next page)."""
    params: list[object] = []
    kinds = [q.kind] if q.kind is not None else list(PARTITIONS)
    union = " UNION ALL ".join(_partition_select(k, q, params) for k in kinds)
    order = SORTS.get(q.sort, SORTS["departs"])
    size = max(1, min(q.page_size, MAX_PAGE_SIZE))
    offset = (max(1, q.page) - 1) * size
    sql = f"SELECT * FROM ({union}) AS hits ORDER BY {order} LIMIT %s OFFSET %s"
    params += [size + 1, offset]
    with connection.cursor() as cur:
        cur.execute(sql, params)
        raw = cur.fetchall()
    rows = [Row(ref=f"{r[0]}{r[1]}", number=r[2], kind=Kind(r[0]).label, origin=r[3], origin_city=r[4],
                destination=r[5], destination_city=r[6], departs_at=_as_dt(r[7]), arrives_at=_as_dt(r[8]),
                price_cents=r[9]) for r in raw[:size]]
    return rows, len(raw) > size


def _as_dt(value: object) -> dt.datetime:
    """SQLite returns text for a raw-SQL datetime column; PostgreSQL returns an aware datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    parsed = dt.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
