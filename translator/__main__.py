"""``python -m translator`` is the ``ml-metrics-bridge`` command."""

from translator.cli import main

main()
