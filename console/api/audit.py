"""/api/v1/audit/*: events, export, checkpoints and the audit public key (auditor, admin)."""

from __future__ import annotations
