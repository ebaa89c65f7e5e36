"""Performance suite of ml-metrics-bridge: ``python -m bench [--smoke] [--long]``.

Every case runs the bridge as a real program (or its real source layer in-process) next
to a comparison measured in the same run on the same machine, and the table lands in
``bench/results.md``. See ``bench/README.md`` for what each case means.

This package must stay cheap to import: the baseline and floor programs run as
``python -m bench.<module>`` children, and whatever is imported here is paid for in
their measured time.
"""
