"""The record: audit event names, the hash-chained log and its verification.

Events are appended in the caller's database transaction, so an operation whose audit
write fails is rolled back with it. Nothing here imports Flask.
"""
