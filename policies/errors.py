"""Errors raised by the policies package; `PolicyError` is the root."""

from __future__ import annotations


class PolicyError(Exception):
    """Root of every error this package raises."""


class InvalidPolicy(PolicyError):
    """A policy document that does not validate; nothing is changed."""
