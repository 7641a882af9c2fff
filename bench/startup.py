"""Time from start to READY=1 for the one-file binary, against `python -m agent run` from source.

    python bench/startup.py --binary dist/plantgate-0.1.0-linux-x86_64 [--runs 5]

Each run starts the agent with a configuration without sources (outbox in a scratch folder,
health server on a free loopback port), listens on a real sd_notify socket as systemd would,
takes the time until READY=1 arrives, then sends SIGTERM and checks for exit status 0. It
prints the median and the ratio binary / source, both measured in this run.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[agent]
site = "bench"
gateway_id = "gw-bench"

[central]
url = "http://127.0.0.1:{port}/ingest"

[outbox]
path = "outbox.sqlite"

[health]
port = 0
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def time_to_ready(command: list[str], folder: Path) -> float:
    """Seconds from spawn to READY=1; raises if READY=1 does not come or the stop is not clean."""
    config = folder / "plantgate.toml"
    config.write_text(CONFIG.format(port=free_port()))
    (folder / "outbox.sqlite").unlink(missing_ok=True)
    notify_path = folder / "notify.sock"
    notify_path.unlink(missing_ok=True)

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        started = time.monotonic()
        process = subprocess.Popen(
            [*command, "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while not notify.recv(4096).startswith(b"READY=1"):
                pass
            elapsed = time.monotonic() - started
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {process.returncode} after SIGTERM: {stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", type=Path, required=True, help="the built one-file binary")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    source_command = [sys.executable, "-m", "agent"]
    binary_command = [str(args.binary.resolve())]
    with tempfile.TemporaryDirectory(prefix="plantgate-bench-") as scratch:
        folder = Path(scratch)
        # One untimed start each, so both are measured with warm page caches.
        time_to_ready(source_command, folder)
        time_to_ready(binary_command, folder)
        source = [time_to_ready(source_command, folder) for _ in range(args.runs)]
        binary = [time_to_ready(binary_command, folder) for _ in range(args.runs)]

    size = args.binary.stat().st_size
    print(f"binary {args.binary.name}: {size / 1024**2:.1f} MiB ({size} bytes)")
    print(
        f"start to READY=1, median of {args.runs}: source {statistics.median(source):.2f} s, "
        f"binary {statistics.median(binary):.2f} s, ratio binary/source "
        f"{statistics.median(binary) / statistics.median(source):.2f}"
    )
    print(f"  source runs: {', '.join(f'{s:.2f}' for s in source)}")
    print(f"  binary runs: {', '.join(f'{s:.2f}' for s in binary)}")
    print("  every run stopped on SIGTERM with exit status 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
