"""The sealed room: what a sandbox is, and the backends that run one.

Nothing in this package imports Flask; the console drives it through `Backend`.
"""
