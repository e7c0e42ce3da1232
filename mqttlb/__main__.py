"""``python -m mqttlb`` is the ``mqttlb`` command."""

from .cli import main

raise SystemExit(main())
