"""``python -m mqttlb`` is the ``mqttlb`` command."""

from .commands.cli import main

raise SystemExit(main())
