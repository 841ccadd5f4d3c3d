"""Policy: building and pinning OPA bundles (``bundle``), running OPA (``opa_process``)
and asking it for judgements (``evaluator``).

Only the bundle names are re-exported here, so importing the package stays cheap;
import ``l7.policy.evaluator`` and ``l7.policy.opa_process`` directly.
"""

from l7.policy.bundle import (
    DEFAULT_SIGNING_KEY,
    REVISION_TAG,
    Activation,
    BuiltBundle,
    BundleLock,
    SigningPolicy,
    activate,
    activation_record,
    activations_path,
    build_bundle,
    compute_revision,
    is_rollback,
    lock_path,
    promote,
    read_activations,
    read_lock,
    verify_built,
    verify_lock,
    write_lock,
)

__all__ = [
    "DEFAULT_SIGNING_KEY",
    "REVISION_TAG",
    "Activation",
    "BuiltBundle",
    "BundleLock",
    "SigningPolicy",
    "activate",
    "activation_record",
    "activations_path",
    "build_bundle",
    "compute_revision",
    "is_rollback",
    "lock_path",
    "promote",
    "read_activations",
    "read_lock",
    "verify_built",
    "verify_lock",
    "write_lock",
]
