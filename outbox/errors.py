"""Errors raised by the outbox, grouped by what the caller must do."""


class OutboxError(Exception):
    """Base class for outbox errors."""


class OutboxFull(OutboxError):
    """The size budget leaves no room for these records. Transactions are refused, never evicted:
    the producer keeps them and retries later."""


class OutboxUnavailable(OutboxError):
    """The store cannot commit right now (disk full, I/O error, locked past the retry bound).
    Nothing of the failed append was stored."""


class SchemaTooNew(OutboxError):
    """The outbox file was written by a newer plantgate; this binary must not touch it."""
