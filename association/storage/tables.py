"""The database's tables (SQLAlchemy Core) and the schema version.

Every backend makes the same tables from `metadata`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
)

from association.columns import BANDS

SCHEMA_VERSION = 5
"""The version of the tables below; stored in ``schema_version``.

2: the ``parameters`` and ``notes`` tables.
3: Objects' ``raErr``, ``decErr`` and per band ``psfFluxWMean``,
``psfFluxMeanErr``, ``psfFluxChi2``.
4: DIASources clustered by their Object's chunk and time (``chunk``), not by Object.
5: Objects clustered by ``repeated`` first: those seen twice or more apart from the rest.
"""

# On SQLite an INTEGER PRIMARY KEY is the rowid itself: no second index.
_Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

parameters = Table(
    "parameters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)
"""The frozen parameters (`association.storage.interface.FrozenParameters`), as text."""

notes = Table(
    "notes",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(1024), nullable=False),
)
"""What the database says of itself, e.g. that its starting catalogue is loaded in full."""

visits = Table(
    "visits",
    metadata,
    Column("visit", _Id, primary_key=True, autoincrement=False),
    Column("mjd", Double, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("filter", String(16), nullable=False),
    Column("n_sources", Integer, nullable=False),
    Column("n_alerts", Integer, nullable=False),
    Column("n_new_objects", Integer, nullable=False),
    Column("n_moving", Integer, nullable=False),
    Column("stored_at", Double, nullable=False),  # Unix time of the Store
)

OBJECT_BAND_STATS = (
    "psfFluxNdata",
    "psfFluxMean",
    "psfFluxM2",
    "psfFluxWMean",
    "psfFluxMeanErr",
    "psfFluxChi2",
)
"""The per-band Object statistics, stored as one column per band, ``{band}_{name}``."""

OBJECT_BAND_COLUMNS = tuple(f"{b}_{name}" for b in BANDS for name in OBJECT_BAND_STATS)

objects = Table(
    "objects",
    metadata,
    Column("diaObjectId", BigInteger, nullable=False),
    Column("fine", BigInteger, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("raErr", Double),
    Column("decErr", Double),
    Column("nDiaSources", Integer, nullable=False),
    Column("firstMjd", Double, nullable=False),
    Column("lastMjd", Double, nullable=False),
    # Band statistics are NULL where the value is NaN (a band with no data).
    *(
        Column(name, SmallInteger, nullable=False)
        if name.endswith("Ndata")
        else Column(name, Double)
        for name in OBJECT_BAND_COLUMNS
    ),
    Column("isVariable", Boolean, nullable=False),
    # 1 once the Object has two DIASources or more (`association.storage.rows.REPEATED_FROM`).
    Column("repeated", SmallInteger, nullable=False),
    # Clustered by (repeated, fine, diaObjectId). The Objects a visit updates are
    # nearly all repeated ones, so its update rewrites their pages, not those of
    # every Object in its field. A fine range is two sequential range scans, one
    # per value of ``repeated``; diaObjectId stays the identity through its unique index.
    PrimaryKeyConstraint("repeated", "fine", "diaObjectId", name="pk_objects"),
    Index("ux_objects_diaObjectId", "diaObjectId", unique=True),
    sqlite_with_rowid=False,
)

diasources = Table(
    "diasources",
    metadata,
    Column("diaSourceId", BigInteger, nullable=False),
    Column("visit", BigInteger, nullable=False),
    Column("diaObjectId", BigInteger, nullable=False),
    Column("ssObjectId", BigInteger, nullable=False),
    # The chunk of its Object (of itself where it has none): what a Slice loads by.
    Column("chunk", BigInteger, nullable=False),
    Column("fine", BigInteger, nullable=False),
    Column("ra", Double, nullable=False),
    Column("dec", Double, nullable=False),
    Column("raErr", Double),
    Column("decErr", Double),
    Column("midpointMjdTai", Double, nullable=False),
    Column("band", String(1), nullable=False),
    Column("psfFlux", Double, nullable=False),
    Column("psfFluxErr", Double, nullable=False),
    Column("snr", Double),
    # Clustered by chunk and time, as Rubin's APDB partitions them: a chunk's
    # recent history is one range read, and a visit's rows go in at the end of
    # each chunk's range instead of beside every Object's earlier ones.
    # diaSourceId stays the identity through its unique index.
    PrimaryKeyConstraint("chunk", "midpointMjdTai", "diaSourceId", name="pk_diasources"),
    Index("ux_diasources_diaSourceId", "diaSourceId", unique=True),
    Index("ix_diasources_visit", "visit"),
    sqlite_with_rowid=False,
)

moving_matches = Table(
    "moving_matches",
    metadata,
    Column("visit", BigInteger, nullable=False),
    Column("ssObjectId", BigInteger, nullable=False),
    Column("diaSourceId", BigInteger, nullable=False),
    PrimaryKeyConstraint("visit", "ssObjectId"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alertId", _Id, primary_key=True, autoincrement=False),
    Column("visit", BigInteger, nullable=False),
    Column("diaSourceId", BigInteger, nullable=False),
    Column("diaObjectId", BigInteger, nullable=False),
    Index("ix_alerts_visit", "visit"),
)
