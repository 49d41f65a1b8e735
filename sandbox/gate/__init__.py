"""The release gate: the only door out of a sandbox. Files an engineer asks to release are
checked here against the active policy (type, format, size, metrics, pickles, dataset leaks)
before any human reviews them.

`__all__` is the public surface third parties use to verify a released bundle offline and
read the lineage it records; each name is imported on first use, so importing one gate
module does not load the verifier's dependencies.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.gate.errors import GateError
    from sandbox.gate.keys import UnsupportedKey
    from sandbox.gate.provenance import (
        DatasetVersion,
        Lineage,
        LineageNode,
        ProvenanceError,
        lineage_of,
    )
    from sandbox.gate.verify import (
        STEP_NAMES,
        BundleVerification,
        BundleVerificationError,
        FileHashMismatch,
        ModelSignatureInvalid,
        ProvenanceLineageInvalid,
        ProvenanceSignatureInvalid,
        ProvenanceStatementInvalid,
        ProvenanceSubjectsMismatch,
        verify_bundle,
    )

_HOMES = {
    "GateError": "errors",
    "UnsupportedKey": "keys",
    "DatasetVersion": "provenance",
    "Lineage": "provenance",
    "LineageNode": "provenance",
    "ProvenanceError": "provenance",
    "lineage_of": "provenance",
    "STEP_NAMES": "verify",
    "BundleVerification": "verify",
    "BundleVerificationError": "verify",
    "FileHashMismatch": "verify",
    "ModelSignatureInvalid": "verify",
    "ProvenanceLineageInvalid": "verify",
    "ProvenanceSignatureInvalid": "verify",
    "ProvenanceStatementInvalid": "verify",
    "ProvenanceSubjectsMismatch": "verify",
    "verify_bundle": "verify",
}

__all__ = [
    "STEP_NAMES",
    "BundleVerification",
    "BundleVerificationError",
    "DatasetVersion",
    "FileHashMismatch",
    "GateError",
    "Lineage",
    "LineageNode",
    "ModelSignatureInvalid",
    "ProvenanceError",
    "ProvenanceLineageInvalid",
    "ProvenanceSignatureInvalid",
    "ProvenanceStatementInvalid",
    "ProvenanceSubjectsMismatch",
    "UnsupportedKey",
    "lineage_of",
    "verify_bundle",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:  # also how `from sandbox.gate import checks` finds the submodule
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"sandbox.gate.{home}"), name)
