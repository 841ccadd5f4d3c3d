"""Policy: building and pinning OPA bundles (``bundle``), running OPA (``opa_process``)
and asking it for judgements (``evaluator``).

Only the bundle names are re-exported here, so importing the package stays cheap;
import ``l7.policy.evaluator`` and ``l7.policy.opa_process`` directly.
"""

from l7.policy.bundle import (
    REVISION_TAG,
    BuiltBundle,
    BundleLock,
    build_bundle,
    compute_revision,
    lock_path,
    read_lock,
    verify_lock,
    write_lock,
)

__all__ = [
    "REVISION_TAG",
    "BuiltBundle",
    "BundleLock",
    "build_bundle",
    "compute_revision",
    "lock_path",
    "read_lock",
    "verify_lock",
    "write_lock",
]
