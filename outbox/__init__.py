"""The durable SQLite outbox and its delivery rules."""
