"""Services: the only code that changes state. Each asks policies, drives the sandbox and
writes the audit record in the same transaction as the state change. No Flask here."""
