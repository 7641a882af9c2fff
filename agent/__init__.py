"""plantgate agent: configuration, command line, supervisor, health server and forwarder."""

__version__ = "0.1.0"
