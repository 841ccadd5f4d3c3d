package l7.decision_test

import data.l7.decision

_local := {
	"name": "local",
	"environments": ["dev", "staging", "production"],
	"enforcement": {"default": "enforced", "environments": {}, "classes": {}},
}

_req(cls, env, ttype, level, payload) := {
	"action": {
		"class": cls,
		"intent": "test",
		"target": {"type": ttype, "id": "t-1"},
		"payload": payload,
	},
	"context": {
		"actor": {"id": "alice", "role": "engineer", "level": level},
		"environment": env,
		"request_source": "agent:test",
	},
}

_failed(result) := {g.id | some g in result.gates; g.result == "fail"}

test_read_in_dev_by_an_operator_is_allowed if {
	r := decision.result with input as _req("data.read", "dev", "dataset", 1, {}) with data.l7.deployment as _local
	r.outcome == "ALLOW"
	r.environment == "dev"
	r.enforcement_mode == "enforced"
	count(r.gates) == 8
	_failed(r) == set()
	r.risk == {"score": 5, "band": "low", "reasons": ["action class data.read: base +5", "environment dev: +0"]}
	r.authority == {"required_levels": [], "min_signatures": 0, "cosign": [], "clauses": []}
	r.reasons == ["all 8 gates passed; risk 5 (low) needs no signatures"]
}

test_unknown_class_is_denied_by_the_allowlist if {
	r := decision.result with input as _req("rm.rf", "dev", "dataset", 1, {}) with data.l7.deployment as _local
	r.outcome == "DENY"
	_failed(r) == {"action_class_allowed", "environment_allowed", "target_type_allowed"}
	r.reasons == [
		`gate action_class_allowed failed: action class "rm.rf" is not on the allowlist`,
		`gate environment_allowed failed: action class "rm.rf" is not allowed in environment dev`,
		`gate target_type_allowed failed: target type "dataset" is not allowed for action class "rm.rf"`,
	]
}

test_production_deploy_is_queued_with_security_cosign if {
	r := decision.result with input as _req("deploy.release", "production", "service", 1, {}) with data.l7.deployment as _local
	r.outcome == "QUEUE"
	r.risk.band in {"medium", "high"}
	r.authority.min_signatures >= 2
	r.authority.cosign == [4]
	r.reasons == ["all 8 gates passed; risk 48 (medium) needs 2 signatures: 1 at level >= 2 (supervisor), 1 at level >= 4 (security_cosign)"]
}

test_large_production_deploy_needs_managers_and_cosign if {
	r := decision.result with input as _req("deploy.release", "production", "service", 1, {"blast_radius": 40})
		with data.l7.deployment as _local
	r.outcome == "QUEUE"
	r.authority == {
		"required_levels": [3, 4],
		"min_signatures": 3,
		"cosign": [4],
		"clauses": [
			{"id": "managers", "min_level": 3, "count": 2},
			{"id": "security_cosign", "min_level": 4, "count": 1},
		],
	}
}

test_million_transfer_in_production_escalates_to_an_executive if {
	r := decision.result with input as _req("funds.transfer", "production", "account", 2, {"amount": 1000000})
		with data.l7.deployment as _local
	r.outcome == "ESCALATE"
	r.risk.band == "critical"
	{"id": "executive", "min_level": 5, "count": 1} in r.authority.clauses
	5 in r.authority.required_levels
	r.reasons == ["risk 100 is critical: critical blocked unless an L5 authorizes"]
}

test_debug_exec_in_production_is_denied if {
	r := decision.result with input as _req("debug.exec", "production", "host", 1, {}) with data.l7.deployment as _local
	r.outcome == "DENY"
	_failed(r) == {"environment_allowed"}
}

test_missing_actor_is_denied if {
	req := json.remove(_req("data.read", "dev", "dataset", 1, {}), ["context/actor"])
	r := decision.result with input as req with data.l7.deployment as _local
	r.outcome == "DENY"
	"input_complete" in _failed(r)
}

test_missing_class_is_denied if {
	req := json.remove(_req("data.read", "dev", "dataset", 1, {}), ["action/class"])
	r := decision.result with input as req with data.l7.deployment as _local
	r.outcome == "DENY"
	_failed(r) == {"input_complete", "action_class_allowed", "environment_allowed", "target_type_allowed"}
}

test_moon_is_judged_as_production if {
	moon := decision.result with input as _req("deploy.release", "moon", "service", 1, {}) with data.l7.deployment as _local
	prod := decision.result with input as _req("deploy.release", "production", "service", 1, {}) with data.l7.deployment as _local
	moon.environment == "production"
	moon.outcome == "QUEUE"
	moon.risk.score == prod.risk.score
	moon.authority == prod.authority
	`environment "moon" is missing or unknown: judged as production +25` in moon.risk.reasons
}

test_empty_and_absent_input_are_denied_with_the_full_shape if {
	empty := decision.result with input as {} with data.l7.deployment as _local
	absent := decision.result with data.l7.deployment as _local
	array_input := decision.result with input as [1, 2] with data.l7.deployment as _local
	nothing := decision.result with input as "x"
	every r in [empty, absent, array_input, nothing] {
		r.outcome == "DENY"
		object.keys(r) == {"outcome", "environment", "enforcement_mode", "gates", "risk", "authority", "lifecycle", "reasons"}
		r.environment == "production"
		count(r.gates) == 8
		"input_complete" in _failed(r)
	}
}

test_absent_deployment_denies if {
	r := decision.result with input as _req("data.read", "dev", "dataset", 1, {})
	r.outcome == "DENY"
	_failed(r) == {"environment_served"}
	r.enforcement_mode == "enforced"
}

test_bundle_for_production_does_not_serve_dev if {
	r := decision.result with input as _req("data.read", "dev", "dataset", 1, {})
		with data.l7.deployment as {"environments": ["production"]}
	r.outcome == "DENY"
}

test_requester_below_class_minimum_is_denied if {
	r := decision.result with input as _req("iam.grant", "dev", "role", 1, {}) with data.l7.deployment as _local
	r.outcome == "DENY"
	_failed(r) == {"requester_level"}
	ok := decision.result with input as _req("iam.grant", "dev", "role", 2, {}) with data.l7.deployment as _local
	ok.outcome == "QUEUE"
}

test_outcomes_per_class_and_environment if {
	cases := [
		["data.read", "dataset", "dev", "ALLOW"],
		["data.read", "dataset", "staging", "ALLOW"],
		["data.read", "dataset", "production", "ALLOW"],
		["ticket.update", "ticket", "production", "ALLOW"],
		["deploy.release", "service", "dev", "ALLOW"],
		["deploy.release", "service", "staging", "QUEUE"],
		["deploy.release", "service", "production", "QUEUE"],
		["funds.transfer", "account", "dev", "ESCALATE"],
		["iam.grant", "role", "dev", "QUEUE"],
		["iam.grant", "role", "production", "QUEUE"],
		["debug.exec", "host", "dev", "ALLOW"],
		["debug.exec", "host", "staging", "QUEUE"],
		["debug.exec", "host", "production", "DENY"],
		["data.delete", "table", "dev", "QUEUE"],
		["data.delete", "table", "production", "QUEUE"],
	]
	every c in cases {
		r := decision.result with input as _req(c[0], c[2], c[1], 2, {}) with data.l7.deployment as _local
		r.outcome == c[3]
	}
}

_dep(enf) := object.union(_local, {"enforcement": enf})

_relaxed := ["dev", "staging"]

test_enforcement_mode_precedence if {
	req := _req("data.read", "dev", "dataset", 1, {})
	decision.enforcement_mode == "guarded" with input as req
		with data.l7.deployment as _dep({"default": "enforced", "environments": {"dev": "advisory"}, "classes": {"data.read": "guarded"}, "allow_relaxed": _relaxed})
	decision.enforcement_mode == "advisory" with input as req
		with data.l7.deployment as _dep({"default": "enforced", "environments": {"dev": "advisory"}, "classes": {"deploy.release": "guarded"}, "allow_relaxed": _relaxed})
	decision.enforcement_mode == "guarded" with input as req
		with data.l7.deployment as _dep({"default": "guarded", "environments": {"production": "advisory"}, "allow_relaxed": _relaxed})
	decision.enforcement_mode == "enforced" with input as req with data.l7.deployment as _local
	decision.enforcement_mode == "enforced" with input as req with data.l7.deployment as _dep({})
}

test_a_class_can_be_held_to_enforced_in_a_relaxed_environment if {
	req := _req("data.delete", "dev", "table", 2, {})
	r := decision.result with input as req
		with data.l7.deployment as _dep({"default": "advisory", "classes": {"data.delete": "enforced"}, "allow_relaxed": _relaxed})
	r.enforcement_mode == "enforced"
	r.outcome == "QUEUE"
}

test_unknown_enforcement_modes_resolve_to_enforced_with_a_reason if {
	req := _req("data.read", "dev", "dataset", 1, {})
	r := decision.result with input as req
		with data.l7.deployment as _dep({
			"default": "off",
			"environments": {"dev": "advisory"},
			"classes": {"data.read": false},
			"allow_relaxed": _relaxed,
		})

	# the most specific setting is invalid: it does not fall through to a laxer one
	r.enforcement_mode == "enforced"
	"enforcement mode false in the deployment data is not one of advisory, guarded, enforced: enforced" in r.reasons
	r2 := decision.result with input as req
		with data.l7.deployment as _dep({"default": "off", "allow_relaxed": _relaxed})
	r2.enforcement_mode == "enforced"
	`enforcement mode "off" in the deployment data is not one of advisory, guarded, enforced: enforced` in r2.reasons
}

test_enforcement_mode_is_reported_in_the_result if {
	r := decision.result with input as _req("data.read", "dev", "dataset", 1, {})
		with data.l7.deployment as _dep({"environments": {"dev": "advisory"}, "allow_relaxed": ["dev"]})
	r.enforcement_mode == "advisory"
	r.outcome == "ALLOW"
	r.reasons == [
		"all 8 gates passed; risk 5 (low) needs no signatures",
		"enforcement mode advisory for environment dev (signed deployment data)",
	]
}

test_production_is_never_relaxed_unless_the_deployment_allows_it if {
	req := _req("deploy.release", "production", "service", 1, {})
	every enf in [
		{"environments": {"production": "advisory"}},
		{"default": "advisory", "allow_relaxed": ["dev", "staging"]},
		{"classes": {"deploy.release": "guarded"}, "allow_relaxed": ["dev"]},
		{"default": "advisory", "allow_relaxed": "production"},
		{"default": "advisory", "allow_relaxed": {"production": true}},
	] {
		r := decision.result with input as req with data.l7.deployment as _dep(enf)
		r.enforcement_mode == "enforced"
		r.outcome == "QUEUE"
		some msg in r.reasons
		contains(msg, "is not in enforcement.allow_relaxed: enforced")
	}
	ok := decision.result with input as req
		with data.l7.deployment as _dep({"environments": {"production": "guarded"}, "allow_relaxed": ["production"]})
	ok.enforcement_mode == "guarded"
	ok.outcome == "QUEUE"
}

test_an_unknown_environment_is_judged_as_production_for_the_mode_too if {
	r := decision.result with input as _req("data.read", "moon", "dataset", 1, {})
		with data.l7.deployment as _dep({"default": "advisory", "allow_relaxed": ["dev", "staging"]})
	r.enforcement_mode == "enforced"
}

test_the_mode_never_comes_from_the_request if {
	req := object.union(_req("data.read", "dev", "dataset", 1, {}), {"enforcement_mode": "advisory", "enforcement": {"allow_relaxed": ["dev"]}})
	r := decision.result with input as req with data.l7.deployment as _local
	r.enforcement_mode == "enforced"
}

test_result_falls_back_to_a_full_deny_when_data_is_broken if {
	r := decision.result with input as _req("data.read", "dev", "dataset", 1, {})
		with data.l7.deployment as _local
		with data.l7.config.weights.environment as {"dev": "zero"}
	r.outcome == "DENY"
	r.gates[0].id == "policy_evaluable"
	r.gates[0].result == "fail"
	r.risk.band == "critical"
	r.authority.required_levels == [5]
}
