# METADATA
# title: Layer-7 authority requirements
# description: >-
#   Maps (action class authority profile, risk band) to clauses: every clause
#   must be met (AND), each by `count` distinct signers at level >= min_level.
#   Classes flagged cosign_l4 add a security co-sign clause in the co-sign
#   bands. Critical is one executive (L5) clause: blocked unless an L5 authorizes.
package l7.authority

import data.l7.lib
import data.l7.risk

# requirements is the authority block of the decision result.
requirements := {
	"required_levels": sort({c.min_level | some c in clauses}),
	"min_signatures": sum([c.count | some c in clauses]),
	"cosign": cosign,
	"clauses": clauses,
}

# clauses are the band's clauses followed by the co-sign clause when it applies.
clauses := array.concat(_band_clauses, _cosign_clauses)

# cosign lists the co-sign level when the co-sign clause applies.
cosign := [_cosign_clause.min_level] if _cosign_applies

else := []

_executive := [{"id": "executive", "min_level": 5, "count": 1}]

_critical_clauses := lib.param(["authority", "critical"], _executive)

_profile_name := object.get(lib.class_config, "authority_profile", "standard")

# An unknown profile or band falls to the critical clauses (fail safe).
_band_clauses := _critical_clauses if {
	risk.band == "critical"
} else := c if {
	c := lib.config.authority.profiles[_profile_name][risk.band]
	is_array(c)
} else := _critical_clauses

_cosign_clause := lib.param(
	["authority", "cosign", "clause"],
	{"id": "security_cosign", "min_level": 4, "count": 1},
)

_cosign_bands := lib.param(["authority", "cosign", "bands"], ["medium", "high"])

_cosign_applies if {
	lib.class_config.cosign_l4 == true
	risk.band in _cosign_bands
}

_cosign_clauses := [_cosign_clause] if _cosign_applies

else := []

# lifecycle says how long a pending decision may wait for each level of authority
# before it escalates (approval_window_s), when it expires (ttl_s), whether
# approvers must give a structured rationale, and how long an authorization stays
# executable once granted (execute_within_s: past it the decision is expired and
# no grant runs). An unknown band gets the shortest window and life (fail safe:
# escalate and expire sooner, never later).
lifecycle := {
	"approval_window_s": _per_band("approval_window_s", 3600),
	"ttl_s": _per_band("ttl_s", 14400),
	"rationale_required": _rationale_required,
	"execute_within_s": execute_within_s,
}

# execute_within_s is the execution window of the class and band: the class's own
# execute_within_s[band] when it sets one, else the band's, else 600 seconds.
execute_within_s := n if {
	n := lib.class_config.execute_within_s[risk.band]
	is_number(n)
	n > 0
} else := _per_band("execute_within_s", 600)

_per_band(key, fallback) := n if {
	n := lib.config.authority.lifecycle[key][risk.band]
	is_number(n)
	n > 0
} else := fallback

_rationale_required if {
	risk.band in lib.param(["authority", "lifecycle", "rationale_required_bands"], ["high", "critical"])
}

default _rationale_required := false
