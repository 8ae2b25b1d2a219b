"""``python -m scar_runtime ...`` is the ``scar`` command (what tests and scripts run)."""

from scar_runtime.commands.cli import main

main()
