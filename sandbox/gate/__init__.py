"""The release gate: the only door out of a sandbox. Files an engineer asks to release are
checked here against the active policy (type, format, size, metrics, pickles, dataset leaks)
before any human reviews them.
"""
