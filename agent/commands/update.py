"""`plantgate update apply|check|status`: install signed releases, with rollback.

`apply` installs a given bundle, folder or URL. `check` looks at `[update] url` for a newer
signed manifest and applies it when this gateway is inside the rollout; the
plantgate-update.timer unit runs it on a schedule. Both need write access to the install
folder and the right to restart the service, so they run as root, not inside the agent.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, Settings, load_config
from agent.config_errors import ConfigError
from agent.update.bundle import VerifiedRelease, fetch_binary, fetch_signed_manifest, load_release
from agent.update.errors import UpdateFailed, UpdateRejected, UpdateRolledBack
from agent.update.install import InstallLayout, UpdatePlan, apply_release, read_outbox_schema, read_state
from agent.update.manifest import in_rollout, parse_version, rollout_bucket
from agent.update.probe import http_ready_probe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("update", help="install a signed release, with rollback if it fails")
    actions = parser.add_subparsers(dest="update_action", metavar="ACTION", required=True)

    apply = actions.add_parser(
        "apply",
        help="verify and install a release bundle, folder or URL, then restart the service",
        description="Refuses releases not signed by a key in [update] public_keys, changed binaries, and "
        "lower versions unless --allow-downgrade. Rolls back if the new version is not ready in time.",
    )
    apply.add_argument("release", metavar="BUNDLE_OR_URL", help="bundle .tar, release folder, or http(s) URL")
    apply.add_argument("--allow-downgrade", action="store_true", help="install a version lower than the current one")
    _config_option(apply)
    apply.set_defaults(handler=handle_apply)

    check = actions.add_parser(
        "check", help="apply the release at [update] url if it is newer and this gateway is in its rollout"
    )
    _config_option(check)
    check.set_defaults(handler=handle_check)

    status = actions.add_parser("status", help="show installed versions and the last update attempt")
    _config_option(status)
    status.set_defaults(handler=handle_status)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help=f"TOML file (default {DEFAULT_CONFIG_PATH})"
    )


def ready_url(settings: Settings) -> str:
    """Return the URL of /readyz: `[update] ready_url`, or the health server's address on loopback."""
    if settings.update.ready_url is not None:
        return str(settings.update.ready_url)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.health.listen, settings.health.listen)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.health.port}/readyz"


def build_plan(settings: Settings, allow_downgrade: bool) -> UpdatePlan:
    return UpdatePlan(
        layout=InstallLayout(settings.update.install_dir),
        restart_command=settings.update.restart_command,
        ready_probe=http_ready_probe(ready_url(settings)),
        ready_timeout_s=settings.update.ready_timeout_s,
        machine=platform.machine(),
        outbox_schema=read_outbox_schema(settings.outbox.path),
        allow_downgrade=allow_downgrade,
        keep_versions=settings.update.keep_versions,
    )


def handle_apply(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    _log_to_stderr()
    plan = build_plan(settings, args.allow_downgrade)
    plan.layout.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.layout.root, prefix=".staging-") as staging:
        try:
            release = load_release(args.release, Path(staging), settings.update.public_keys)
            print(f"verified release {release.manifest.version} (signed by key {release.signed.key_id})")
            result = apply_release(release, plan)
        except (UpdateRejected, UpdateRolledBack, UpdateFailed) as error:
            return _report(error)
    print(_describe(result.decision.value, result.version, result.previous))
    return 0


def handle_check(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    if settings.update.url is None:
        print("no [update] url is configured; nothing to check", file=sys.stderr)
        return 2
    _log_to_stderr()
    plan = build_plan(settings, allow_downgrade=False)
    url = str(settings.update.url)
    try:
        signed = fetch_signed_manifest(url, settings.update.public_keys)
    except UpdateRejected as error:
        return _report(error)

    manifest = signed.manifest
    current = plan.layout.current_version()
    if current is not None and parse_version(manifest.version) <= parse_version(current):
        print(f"release {manifest.version} at {url} is not newer than the installed {current}; nothing to do")
        return 0
    percent = manifest.rollout_percent if manifest.rollout_percent is not None else settings.update.rollout_percent
    gateway = settings.agent.gateway_id
    if not in_rollout(gateway, percent):
        print(
            f"release {manifest.version} is rolled out to {percent}% of gateways; gateway {gateway} is in "
            f"bucket {rollout_bucket(gateway)} and waits"
        )
        return 0

    plan.layout.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=plan.layout.root, prefix=".staging-") as staging:
        try:
            release = VerifiedRelease(signed, fetch_binary(url, manifest, Path(staging)))
            result = apply_release(release, plan)
        except (UpdateRejected, UpdateRolledBack, UpdateFailed) as error:
            return _report(error)
    print(_describe(result.decision.value, result.version, result.previous))
    return 0


def handle_status(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    if settings is None:
        return 2
    layout = InstallLayout(settings.update.install_dir)
    print(f"install folder {layout.root}")
    print(f"current: {layout.current_version() or 'none'}")
    print(f"installed: {', '.join(layout.installed_versions()) or 'none'}")
    state = read_state(layout)
    if state is None:
        print("last update: none")
    else:
        result, offered, at = state.get("result"), state.get("to"), state.get("at")
        print(f"last update: {result} {state.get('from')} -> {offered} at {at}")
        print(f"  {state.get('message')}")
    return 0


def _describe(decision: str, version: str, previous: str | None) -> str:
    if decision == "same":
        return f"release {version} is already installed and current; nothing changed"
    return f"{decision}: {previous or 'nothing'} -> {version}; {version} is running and ready"


def _report(error: Exception) -> int:
    kind = {UpdateRejected: "rejected", UpdateRolledBack: "rolled back", UpdateFailed: "FAILED"}[type(error)]
    print(f"plantgate update {kind}: {error}", file=sys.stderr)
    return 1


def _load(path: Path) -> Settings | None:
    try:
        return load_config(path)
    except ConfigError as error:
        print(error.report(), file=sys.stderr)
        return None


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
