"""The file drop folder: complete files in, one durable append per file, then processed/ or error/.

A file is read only when its name has no temporary suffix and its size and modification time
have held still for `settle_s`. All its transactions are appended in one call, which commits
all or nothing; only after that returns is the file moved to processed/. A file with any
problem goes to error/ with a `.error.txt` beside it, and nothing of it is stored.

A crash between the append and the move leaves the file in place: on restart it is read
again, the outbox recognises every id as held, and the file is moved without new records.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from drivers.base import RecordSink
from drivers.mes.config import MesDropConfig
from drivers.mes.file_formats import parse_file
from drivers.mes.intake import BatchInvalid, Problem, to_record, validate_batch
from outbox.clock import Clock
from outbox.errors import OutboxFull, OutboxUnavailable
from outbox.records import format_time
from outbox.startup import sync_directory

log = logging.getLogger(__name__)

PROCESSED = "processed"
ERROR = "error"
ERROR_REPORT_SUFFIX = ".error.txt"


@dataclass(frozen=True)
class Seen:
    """One observation of a file: its size and modification time, and since when they held still."""

    size: int
    mtime_ns: int
    still_since: float


def is_candidate(name: str, temporary_suffixes: Iterable[str]) -> bool:
    """Return True if a file may be read: its name is not hidden and has no temporary suffix."""
    lowered = name.lower()
    if name.startswith("."):
        return False
    return not any(lowered.endswith(suffix.lower()) for suffix in temporary_suffixes)


def observe(
    previous: Mapping[str, Seen], listing: Mapping[str, tuple[int, int]], now: float, settle_s: float
) -> tuple[dict[str, Seen], list[str]]:
    """Update the observations with a new listing of (size, mtime_ns) per name.

    Returns the new observations and the names whose size and mtime have not changed for
    `settle_s` seconds, oldest modification first. A file that changes starts its wait again.
    """
    current: dict[str, Seen] = {}
    ready: list[tuple[int, str]] = []
    for name, (size, mtime_ns) in listing.items():
        before = previous.get(name)
        if before is not None and before.size == size and before.mtime_ns == mtime_ns:
            seen = before
        else:
            seen = Seen(size, mtime_ns, now)
        current[name] = seen
        if now - seen.still_since >= settle_s:
            ready.append((mtime_ns, name))
    return current, [name for _, name in sorted(ready)]


def unique_target(folder_names: set[str], name: str) -> str:
    """Choose a name for `name` in a folder that contains `folder_names`, with `-1`, `-2`, ...
    before the suffix when taken, so a file dropped twice never overwrites the first one.

    A report without its file is not counted as taken: it is left by a crash between writing
    the report and moving the file, and the file's next rejection rewrites it.
    """
    stem, dot, suffix = name.rpartition(".")
    if not dot or not stem:
        stem, suffix, dot = name, "", ""
    candidate = name
    number = 0
    while candidate in folder_names:
        number += 1
        candidate = f"{stem}-{number}{dot}{suffix}"
    return candidate


def error_report(name: str, problems: list[Problem], rejected_at: str) -> str:
    lines = [
        f"file: {name}",
        f"rejected at: {rejected_at}",
        "nothing of this file was stored; fix the problems below and drop the file again",
        "",
        *(problem.describe() for problem in problems),
        "",
    ]
    return "\n".join(lines)


class FileOutcome(StrEnum):
    PROCESSED = "processed"
    REJECTED = "rejected"
    RETRY = "retry"
    GONE = "gone"


@dataclass
class DropCounters:
    files_processed: int = 0
    files_rejected: int = 0
    transactions_created: int = 0
    transactions_duplicate: int = 0
    outbox_rejections: int = 0


@dataclass
class DropFolder:
    """The watcher of one drop folder. `run` loops until cancelled; `process` handles one file."""

    config: MesDropConfig
    source_name: str
    sink: RecordSink
    clock: Clock
    counters: DropCounters = field(default_factory=DropCounters)
    last_error: str | None = None
    _seen: dict[str, Seen] = field(default_factory=dict)
    # Files that could be neither processed nor moved to error/ (permissions): skipped until
    # their size or mtime changes, so one such file does not stop the folder.
    _unmovable: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.config.folder

    async def prepare(self) -> None:
        """Create the folder with processed/ and error/. Raises OSError."""
        for path in (self.folder, self.folder / PROCESSED, self.folder / ERROR):
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)

    async def run(self) -> None:
        """Poll the folder until cancelled. Raises OSError when the folder cannot be listed."""
        while True:
            await self.scan_once()
            await self.clock.sleep(self.config.poll_interval_s)

    async def scan_once(self) -> list[tuple[str, FileOutcome]]:
        """List the folder and process every file that is ready, in modification order."""
        listing = await asyncio.to_thread(_list_files, self.folder, self.config.temporary_suffixes)
        self._unmovable = {name: key for name, key in self._unmovable.items() if listing.get(name) == key}
        listing = {name: key for name, key in listing.items() if name not in self._unmovable}
        self._seen, ready = observe(self._seen, listing, self.clock.monotonic(), self.config.settle_s)
        outcomes = []
        for name in ready:
            outcome = await self.process(self.folder / name)
            outcomes.append((name, outcome))
            if outcome is FileOutcome.RETRY:
                # The outbox rejected this file, and it would reject the files after it too.
                break
            self._seen.pop(name, None)
        return outcomes

    async def process(self, path: Path) -> FileOutcome:
        """Store all transactions of one file durably, then move it to processed/; or move it to
        error/ with a report. Returns RETRY, leaving the file, when the outbox rejected the append."""
        try:
            data = await asyncio.to_thread(_read_bounded, path, int(self.config.max_file_bytes))
        except FileNotFoundError:
            return FileOutcome.GONE
        except _TooLarge as error:
            return await self._reject(path, [Problem(str(error))])
        except OSError as error:
            return await self._reject(path, [Problem(f"cannot read the file: {error}")])

        try:
            transactions = validate_batch(parse_file(path.name, data, self.config))
        except BatchInvalid as invalid:
            return await self._reject(path, invalid.problems)

        captured_at = self.clock.now()
        records = [to_record(self.source_name, transaction, captured_at) for transaction in transactions]
        try:
            stored_now = await self.sink.append(records)
        except (OutboxFull, OutboxUnavailable) as error:
            self.counters.outbox_rejections += 1
            if self.last_error is None:
                log.warning(
                    "drop folder file waits because the outbox rejected it: %s",
                    error,
                    extra={"file": str(path)},
                )
            self.last_error = f"{path.name} waits: {error}"
            return FileOutcome.RETRY

        created = sum(stored_now)
        self.counters.transactions_created += created
        self.counters.transactions_duplicate += len(stored_now) - created
        # Guarantee: the move happens only after the append returned, that is after the sync.
        await asyncio.to_thread(_move, path, self.folder / PROCESSED, None)
        self.counters.files_processed += 1
        self.last_error = None
        return FileOutcome.PROCESSED

    async def _reject(self, path: Path, problems: list[Problem]) -> FileOutcome:
        report = error_report(path.name, problems, format_time(self.clock.now()))
        try:
            await asyncio.to_thread(_move, path, self.folder / ERROR, report)
        except FileNotFoundError:
            return FileOutcome.GONE
        except OSError as error:
            seen = self._seen.get(path.name)
            if seen is not None:
                self._unmovable[path.name] = (seen.size, seen.mtime_ns)
            self.last_error = f"{path.name} cannot be moved to {ERROR}/: {error}"
            log.error(
                "drop folder file is invalid and cannot be moved to %s/; fix its permissions: %s",
                ERROR,
                error,
                extra={"file": str(path)},
            )
            return FileOutcome.REJECTED
        self.counters.files_rejected += 1
        log.warning(
            "drop folder file rejected: %s",
            problems[0].describe() if problems else "",
            extra={"file": str(path), "problems": len(problems)},
        )
        return FileOutcome.REJECTED


class _TooLarge(Exception):
    pass


def _list_files(folder: Path, temporary_suffixes: list[str]) -> dict[str, tuple[int, int]]:
    listing: dict[str, tuple[int, int]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate(entry.name, temporary_suffixes):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            listing[entry.name] = (stat.st_size, stat.st_mtime_ns)
    return listing


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _TooLarge(f"the file is larger than {max_bytes} bytes (drop.max_file_bytes); split it")
    return data


def _move(path: Path, target_folder: Path, report: str | None) -> Path:
    """Move a file into `target_folder` under a free name, with its report first if given, and
    sync both folders so the move survives a power cut. Raises FileNotFoundError if it is gone."""
    names = set(os.listdir(target_folder))
    target = target_folder / unique_target(names, path.name)
    if report is not None:
        report_path = target.with_name(target.name + ERROR_REPORT_SUFFIX)
        with report_path.open("w", encoding="utf-8") as file:
            file.write(report)
            file.flush()
            os.fsync(file.fileno())
    os.replace(path, target)
    sync_directory(target_folder)
    sync_directory(path.parent)
    return target
