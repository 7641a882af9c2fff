"""The outbox file's schema and its migrations, versioned with `PRAGMA user_version`.

Each entry of MIGRATIONS moves the schema up by one version and is applied once, in its own
transaction. Entries are only ever appended: a released migration is never edited, so every
outbox written by an earlier release can be brought forward.

An older plantgate that finds a newer schema refuses to start and names the release to run.
It can name it only if the file records it: every migration after version 1 must also run
`INSERT OR REPLACE INTO schema_releases (version, first_release) VALUES (<N>, '<release>')`,
and the version 2 migration must first create that table with
`CREATE TABLE IF NOT EXISTS schema_releases (version INTEGER PRIMARY KEY, first_release TEXT NOT NULL)`.
`release_for` reads it.
"""

from __future__ import annotations

import sqlite3

from outbox.errors import SchemaTooNew

MIGRATIONS: list[str] = [
    # Version 1: the first release.
    """
    CREATE TABLE records (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        lane INTEGER NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        source_time TEXT,
        captured_at TEXT NOT NULL,
        quality TEXT NOT NULL,
        payload TEXT NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX records_by_lane ON records (lane, seq);

    -- Ids of delivered transactions and events, so a re-capture after delivery (a file read
    -- again after a crash) is still recognised. Pruned after a retention period.
    CREATE TABLE delivered (
        id TEXT PRIMARY KEY,
        lane INTEGER NOT NULL,
        delivered_at TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX delivered_by_time ON delivered (delivered_at);

    CREATE TABLE dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        lane INTEGER NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        source_time TEXT,
        captured_at TEXT NOT NULL,
        quality TEXT NOT NULL,
        payload TEXT NOT NULL,
        size INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        status INTEGER,
        reason TEXT NOT NULL,
        failed_at TEXT NOT NULL
    );

    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def read_version(connection: sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def migrate(connection: sqlite3.Connection, path: str) -> int:
    """Bring the schema up to SCHEMA_VERSION and return the version found before.

    Raises SchemaTooNew, without changing the file, if a newer plantgate wrote it.
    The connection must be in autocommit mode (isolation_level=None).
    """
    found = read_version(connection)
    if found > SCHEMA_VERSION:
        release = release_for(connection, found)
        to_run = f"plantgate {release} or newer" if release else f"a plantgate release with outbox schema {found}"
        raise SchemaTooNew(
            f"outbox {path} has schema version {found}, but this plantgate supports up to version "
            f"{SCHEMA_VERSION}. Run {to_run} (the manifest of each release lists its outbox_schema; "
            f"releases installed by `plantgate update` stay under versions/ in the install folder). "
            f"The file was left unchanged."
        )

    for version in range(found + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[version - 1]
        connection.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {version}")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    return found


def release_for(connection: sqlite3.Connection, version: int) -> str | None:
    """The first plantgate release that writes schema `version`, as recorded in the file, or None
    when the file does not record it (files of schema version 1 never do)."""
    try:
        row = connection.execute("SELECT first_release FROM schema_releases WHERE version = ?", (version,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return str(row[0]) if row and row[0] else None


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        current.append(line)
        candidate = "\n".join(current)
        if sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements
