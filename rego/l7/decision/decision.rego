# METADATA
# title: Layer-7 decision
# description: >-
#   The one entrypoint, data.l7.decision.result: gates, risk, authority and
#   enforcement mode combined into an outcome. Any failed gate denies;
#   otherwise critical escalates, no signatures allows, and anything else
#   queues for authority. The result is always defined; if any part cannot
#   be computed the default is a DENY.
package l7.decision

import data.l7.authority
import data.l7.gates
import data.l7.lib
import data.l7.risk

# result is the decision handed to the engine.
default result := {
	"outcome": "DENY",
	"environment": "production",
	"enforcement_mode": "enforced",
	"gates": [{
		"id": "policy_evaluable",
		"title": "Policy could evaluate the request",
		"result": "fail",
		"reason": "the decision could not be computed from this request and policy data",
		"severity": "critical",
	}],
	"risk": {"score": 100, "band": "critical", "reasons": ["risk could not be computed: treated as worst"]},
	"authority": {
		"required_levels": [5],
		"min_signatures": 1,
		"cosign": [],
		"clauses": [{"id": "executive", "min_level": 5, "count": 1}],
	},
	"lifecycle": {"approval_window_s": 3600, "ttl_s": 14400, "rationale_required": true, "execute_within_s": 600},
	"reasons": ["policy could not evaluate the request: denied (fail closed)"],
}

result := {
	"outcome": outcome,
	"environment": lib.environment,
	"enforcement_mode": enforcement_mode,
	"gates": gates.list,
	"risk": {"score": risk.score, "band": risk.band, "reasons": risk.reasons},
	"authority": authority.requirements,
	"lifecycle": authority.lifecycle,
	"reasons": _all_reasons,
}

# outcome: any failed gate denies; then critical escalates; then no signatures allows.
default outcome := "DENY"

outcome := "DENY" if {
	not gates.all_passed
} else := "ESCALATE" if {
	risk.band == "critical"
} else := "ALLOW" if {
	authority.requirements.min_signatures == 0
} else := "QUEUE"

# reasons says why, in words, for the outcome.
reasons := [sprintf("gate %s failed: %s", [g.id, g.reason]) | some g in gates.list; g.result != "pass"] if {
	outcome == "DENY"
} else := [sprintf(
	"risk %v is critical: critical blocked unless an L5 authorizes",
	[risk.score],
)] if {
	outcome == "ESCALATE"
} else := [sprintf(
	"all %d gates passed; risk %v (%s) needs no signatures",
	[count(gates.list), risk.score, risk.band],
)] if {
	outcome == "ALLOW"
} else := [sprintf(
	"all %d gates passed; risk %v (%s) needs %v signatures: %s",
	[count(gates.list), risk.score, risk.band, authority.requirements.min_signatures, _clauses_text],
)]

_clauses_text := concat(", ", [sprintf("%v at level >= %v (%s)", [c.count, c.min_level, c.id]) |
	some c in authority.clauses
])

# enforcement_mode comes from the signed deployment data, never from the request:
# a per-class override, else the environment's mode, else the bundle default,
# else "enforced". A mode other than "enforced" takes effect only in an
# environment the deployment data lists in enforcement.allow_relaxed (so
# production is never advisory unless the signed policy itself says so); a
# value that is not a known mode, or a relaxed mode that is not allowed,
# resolves to "enforced" and says why in the reasons.
default enforcement_mode := "enforced"

enforcement_mode := _requested_mode if {
	_requested_mode in {"advisory", "guarded"}
	_relaxed_allowed
}

_requested_mode := m if {
	m := data.l7.deployment.enforcement.classes[input.action.class]
} else := m if {
	m := data.l7.deployment.enforcement.environments[lib.environment]
} else := m if {
	m := data.l7.deployment.enforcement["default"]
} else := "enforced"

_relaxed_allowed if {
	allowed := data.l7.deployment.enforcement.allow_relaxed
	is_array(allowed)
	lib.environment in allowed
}

_modes := {"advisory", "guarded", "enforced"}

# enforcement_reasons says why the mode in force is what it is, when that is not plain "enforced".
enforcement_reasons contains msg if {
	not _requested_mode in _modes
	msg := sprintf(
		"enforcement mode %s in the deployment data is not one of advisory, guarded, enforced: enforced",
		[json.marshal(_requested_mode)],
	)
}

enforcement_reasons contains msg if {
	_requested_mode in {"advisory", "guarded"}
	not _relaxed_allowed
	msg := sprintf(
		"enforcement mode %s requested, but environment %s is not in enforcement.allow_relaxed: enforced",
		[_requested_mode, lib.environment],
	)
}

enforcement_reasons contains msg if {
	enforcement_mode != "enforced"
	msg := sprintf(
		"enforcement mode %s for environment %s (signed deployment data)",
		[enforcement_mode, lib.environment],
	)
}

_all_reasons := array.concat(reasons, sort([m | some m in enforcement_reasons]))
