package l7.gates_test

import data.l7.gates

_deployment := {"name": "local", "environments": ["dev", "staging", "production"]}

_req(cls, env, ttype, level) := {
	"action": {
		"class": cls,
		"intent": "test",
		"target": {"type": ttype, "id": "t-1"},
		"payload": {},
	},
	"context": {"actor": {"id": "alice", "role": "engineer", "level": level}, "environment": env},
}

_pass(id, title, severity) := {"id": id, "title": title, "result": "pass", "reason": title, "severity": severity}

_fail(id, title, severity, reason) := {"id": id, "title": title, "result": "fail", "reason": reason, "severity": severity}

_t_complete := "Request is complete and well-formed"

_t_class := "Action class is on the allowlist"

_t_served := "Environment is served by this bundle"

_t_env := "Action class is allowed in this environment"

_t_target := "Target type is allowed for the action class"

_t_level := "Requester level is high enough for the action class"

_t_secrets := "Secret references are within the actor's reach"

_t_tool := "Tool is on the allowlist for the action class"

test_a_good_request_passes_every_gate_in_id_order if {
	got := gates.list with input as _req("data.read", "dev", "dataset", 1)
		with data.l7.deployment as _deployment
	got == [
		_pass("action_class_allowed", _t_class, "critical"),
		_pass("environment_allowed", _t_env, "high"),
		_pass("environment_served", _t_served, "critical"),
		_pass("input_complete", _t_complete, "critical"),
		_pass("requester_level", _t_level, "high"),
		_pass("secret_refs_allowed", _t_secrets, "critical"),
		_pass("target_type_allowed", _t_target, "high"),
		_pass("tool_allowed", _t_tool, "critical"),
	]
	gates.all_passed with input as _req("data.read", "dev", "dataset", 1)
		with data.l7.deployment as _deployment
	count(gates.failed) == 0 with input as _req("data.read", "dev", "dataset", 1)
		with data.l7.deployment as _deployment
}

test_empty_input_fails_every_gate_but_none_is_missing if {
	got := gates.list with input as {} with data.l7.deployment as _deployment
	got == [
		_fail("action_class_allowed", _t_class, "critical", "action class (missing) is not on the allowlist"),
		_fail("environment_allowed", _t_env, "high", "action class (missing) is not allowed in environment production"),
		_pass("environment_served", _t_served, "critical"),
		_fail(
			"input_complete", _t_complete, "critical",
			concat("", [
				"request is incomplete or malformed: ",
				"action.class must be a non-empty string, ",
				"action.target.id must be a non-empty string, ",
				"action.target.type must be a non-empty string, ",
				"context.actor.id must be a non-empty string, ",
				"context.actor.level must be an integer 1-5",
			]),
		),
		_fail("requester_level", _t_level, "high", "actor level (missing) is below the minimum L1 for action class (missing)"),
		_pass("secret_refs_allowed", _t_secrets, "critical"),
		_fail("target_type_allowed", _t_target, "high", "target type (missing) is not allowed for action class (missing)"),
		_pass("tool_allowed", _t_tool, "critical"),
	]
	not gates.all_passed with input as {} with data.l7.deployment as _deployment
}

test_no_input_at_all_does_not_pass if {
	not gates.all_passed with data.l7.deployment as _deployment
	"input_complete" in gates.failed with data.l7.deployment as _deployment
}

test_missing_actor_fails_input_complete if {
	req := json.remove(_req("data.read", "dev", "dataset", 1), ["context/actor"])
	gates.failed == {"input_complete", "requester_level"} with input as req with data.l7.deployment as _deployment
}

test_each_malformed_field_fails_input_complete if {
	every patch in [
		{"op": "replace", "path": "/context/actor/id", "value": ""},
		{"op": "replace", "path": "/context/actor/id", "value": 42},
		{"op": "replace", "path": "/action/target/id", "value": null},
		{"op": "remove", "path": "/action/target"},
		{"op": "replace", "path": "/action/payload", "value": "rm -rf /"},
	] {
		req := json.patch(_req("data.read", "dev", "dataset", 1), [patch])
		"input_complete" in gates.failed with input as req with data.l7.deployment as _deployment
	}
}

test_malformed_payload_reason if {
	req := json.patch(_req("data.read", "dev", "dataset", 1), [{"op": "replace", "path": "/action/payload", "value": 1}])
	some g in gates.list with input as req with data.l7.deployment as _deployment
	g.id == "input_complete"
	g.reason == "request is incomplete or malformed: action.payload must be an object when present"
}

test_actor_level_must_be_an_integer_1_to_5 if {
	every level in [0, 6, 1.5, "1", null] {
		gates.failed == {"input_complete", "requester_level"} with input as _req("data.read", "dev", "dataset", level)
			with data.l7.deployment as _deployment
	}
}

test_unknown_class_fails_the_allowlist if {
	got := gates.failed with input as _req("rm.rf", "dev", "dataset", 1) with data.l7.deployment as _deployment
	got == {"action_class_allowed", "environment_allowed", "target_type_allowed"}
	some g in gates.list with input as _req("rm.rf", "dev", "dataset", 1) with data.l7.deployment as _deployment
	g == _fail("action_class_allowed", _t_class, "critical", `action class "rm.rf" is not on the allowlist`)
}

test_missing_deployment_fails_closed if {
	gates.failed == {"environment_served"} with input as _req("data.read", "dev", "dataset", 1)
	some g in gates.list with input as _req("data.read", "dev", "dataset", 1)
	g.reason == "environment dev is not served by this bundle (serves nothing: no deployment data)"
}

test_environment_not_served_by_this_bundle if {
	some g in gates.list with input as _req("data.read", "dev", "dataset", 1)
		with data.l7.deployment as {"environments": ["production"]}
	g == _fail("environment_served", _t_served, "critical", `environment dev is not served by this bundle (serves ["production"])`)
}

test_unknown_environment_is_judged_as_production_and_must_be_served if {
	gates.failed == {"environment_served"} with input as _req("data.read", "moon", "dataset", 1)
		with data.l7.deployment as {"environments": ["dev"]}
	gates.all_passed with input as _req("data.read", "moon", "dataset", 1)
		with data.l7.deployment as {"environments": ["production"]}
}

test_debug_exec_is_not_allowed_in_production if {
	gates.failed == {"environment_allowed"} with input as _req("debug.exec", "production", "host", 1)
		with data.l7.deployment as _deployment
	gates.all_passed with input as _req("debug.exec", "staging", "host", 1)
		with data.l7.deployment as _deployment
}

test_target_type_must_match_the_class if {
	some g in gates.list with input as _req("deploy.release", "dev", "dataset", 1)
		with data.l7.deployment as _deployment
	g == _fail("target_type_allowed", _t_target, "high", `target type "dataset" is not allowed for action class "deploy.release"`)
}

test_requester_level_below_the_class_minimum if {
	some g in gates.list with input as _req("iam.grant", "dev", "role", 1) with data.l7.deployment as _deployment
	g == _fail("requester_level", _t_level, "high", `actor level 1 is below the minimum L2 for action class "iam.grant"`)
	gates.all_passed with input as _req("iam.grant", "dev", "role", 2) with data.l7.deployment as _deployment
}

test_every_gate_carries_its_metadata if {
	gs := gates.list with input as {} with data.l7.deployment as _deployment
	count(gs) == 8
	every g in gs {
		regex.match(`^[a-z_]+$`, g.id)
		g.title != ""
		g.severity in {"low", "medium", "high", "critical"}
	}
}

test_secret_refs_within_the_role_prefix_pass_others_fail if {
	base := object.union(_req("data.read", "dev", "dataset", 1), {"context": {"actor": {"role": "engineer"}}})
	ok := object.union(base, {"secrets": [{"ref": "vault:secret/app/db#password", "mount": "secret", "path": "app/db", "exists": true}]})
	gates.all_passed with input as ok with data.l7.deployment as _deployment
	bad := object.union(base, {"secrets": [
		{"ref": "vault:secret/payroll/db#password", "mount": "secret", "path": "payroll/db", "exists": true},
		{"ref": "vault:secret/app/gone#x", "mount": "secret", "path": "app/gone", "exists": false},
	]})
	some g in gates.list with input as bad with data.l7.deployment as _deployment
	g.id == "secret_refs_allowed"
	g.result == "fail"
	g.reason == `secret references ["vault:secret/app/gone#x", "vault:secret/payroll/db#password"] are missing or outside what role "engineer" may use`
}

test_secret_refs_without_a_role_are_refused if {
	no_role := json.remove(_req("data.read", "dev", "dataset", 1), ["context/actor/role"])
	r := object.union(no_role, {"secrets": [{"ref": "vault:secret/app/db#p", "mount": "secret", "path": "app/db", "exists": true}]})
	failed := gates.failed with input as r with data.l7.deployment as _deployment
	"secret_refs_allowed" in failed
}

_with_tool(cls, ttype, tool) := object.union(_req(cls, "dev", ttype, 1), {"action": {"tool": tool}})

_tool_gate(inp) := g if {
	some g in gates.list with input as inp with data.l7.deployment as _deployment
	g.id == "tool_allowed"
}

test_a_listed_tool_passes if {
	_tool_gate(_with_tool("data.read", "dataset", "report-builder")) == _pass("tool_allowed", _t_tool, "critical")
}

test_an_unlisted_tool_fails if {
	_tool_gate(_with_tool("data.read", "dataset", "curl")) == _fail(
		"tool_allowed", _t_tool, "critical",
		`tool "curl" is not on the allowlist for action class "data.read"`,
	)
}

test_a_tool_listed_for_another_class_fails if {
	g := _tool_gate(_with_tool("data.read", "dataset", "transfer"))
	g.result == "fail"
}

test_a_tool_on_an_unknown_class_fails if {
	g := _tool_gate(_with_tool("shell.exec", "host", "bash"))
	g.result == "fail"
}

test_a_non_string_tool_fails if {
	g := _tool_gate(_with_tool("data.read", "dataset", 7))
	g.result == "fail"
}

test_tool_required_refuses_a_request_naming_none if {
	g := _tool_gate(_req("data.read", "dev", "dataset", 1)) with data.l7.config.classes["data.read"].tool_required as true
	g.result == "fail"
	g.reason == `tool (none) is not on the allowlist for action class "data.read"`
}
