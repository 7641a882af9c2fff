"""Subcommands of `plantgate`. Each module has `register(subparsers)`, which adds its parser and
sets `handler` to a function taking the parsed arguments and returning the exit code."""

from agent.commands import check_config, demo, opcua, outbox, receiver, run, sample, schema, simulate, update

COMMAND_MODULES = [run, check_config, demo, receiver, simulate, schema, update, outbox, sample, opcua]
