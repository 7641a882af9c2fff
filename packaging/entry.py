"""Entry point of the PyInstaller binary: the same `plantgate` command line as the installed script."""

import sys

from agent.cli import main

sys.exit(main())
