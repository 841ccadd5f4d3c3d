package l7.authority_test

import data.l7.authority

_req(cls, env, ttype, payload) := {
	"action": {"class": cls, "target": {"type": ttype, "id": "t-1"}, "payload": payload},
	"context": {"actor": {"id": "alice", "level": 1}, "environment": env},
}

_none := {"required_levels": [], "min_signatures": 0, "cosign": [], "clauses": []}

_supervisor := {"id": "supervisor", "min_level": 2, "count": 1}

_manager := {"id": "manager", "min_level": 3, "count": 1}

_managers := {"id": "managers", "min_level": 3, "count": 2}

_cosign := {"id": "security_cosign", "min_level": 4, "count": 1}

_executive := {"id": "executive", "min_level": 5, "count": 1}

test_low_band_routine_class_needs_no_one if {
	authority.requirements == _none with input as _req("data.read", "dev", "dataset", {})
}

test_medium_band_routine_class_needs_no_one if {
	authority.requirements == _none with input as _req("data.read", "production", "dataset", {})
}

test_high_band_routine_class_needs_a_supervisor if {
	authority.requirements == {
		"required_levels": [2],
		"min_signatures": 1,
		"cosign": [],
		"clauses": [_supervisor],
	} with input as _req("data.read", "production", "dataset", {"sensitivity": ["pii", "credentials"]})
}

test_medium_deploy_needs_a_supervisor_and_security_cosign if {
	authority.requirements == {
		"required_levels": [2, 4],
		"min_signatures": 2,
		"cosign": [4],
		"clauses": [_supervisor, _cosign],
	} with input as _req("deploy.release", "production", "service", {})
}

test_high_deploy_needs_two_managers_and_security_cosign if {
	authority.requirements == {
		"required_levels": [3, 4],
		"min_signatures": 3,
		"cosign": [4],
		"clauses": [_managers, _cosign],
	} with input as _req("deploy.release", "production", "service", {"blast_radius": 40})
}

test_low_band_deploy_needs_no_cosign if {
	authority.requirements == _none with input as _req("deploy.release", "dev", "service", {})
}

test_privileged_class_needs_a_supervisor_even_when_low if {
	authority.requirements == {
		"required_levels": [2],
		"min_signatures": 1,
		"cosign": [],
		"clauses": [_supervisor],
	} with input as _req("funds.transfer", "dev", "account", {"amount": 0})
		with data.l7.config.classes["funds.transfer"].base as 0
}

test_privileged_medium_needs_a_manager_and_cosign if {
	authority.requirements == {
		"required_levels": [3, 4],
		"min_signatures": 2,
		"cosign": [4],
		"clauses": [_manager, _cosign],
	} with input as _req("funds.transfer", "dev", "account", {"amount": 25})
}

test_critical_is_one_executive_clause if {
	authority.requirements == {
		"required_levels": [5],
		"min_signatures": 1,
		"cosign": [],
		"clauses": [_executive],
	} with input as _req("funds.transfer", "production", "account", {"amount": 1000000})
}

test_unknown_profile_falls_to_the_executive if {
	authority.clauses == [_executive] with input as _req("data.read", "dev", "dataset", {})
		with data.l7.config.classes["data.read"].authority_profile as "nonexistent"
}

test_cosign_bands_come_from_data if {
	authority.cosign == [] with input as _req("deploy.release", "production", "service", {})
		with data.l7.config.authority.cosign.bands as ["high"]
}

test_lifecycle_low_band_uses_the_long_window if {
	authority.lifecycle == {"approval_window_s": 14400, "ttl_s": 86400, "rationale_required": false, "execute_within_s": 14400} with input as _req("data.read", "dev", "dataset", {})
}

test_lifecycle_high_band_needs_rationale_and_a_shorter_window if {
	authority.lifecycle == {"approval_window_s": 7200, "ttl_s": 43200, "rationale_required": true, "execute_within_s": 1800} with input as _req("deploy.release", "production", "service", {"blast_radius": 40})
}

test_lifecycle_critical_is_shortest if {
	authority.lifecycle == {"approval_window_s": 3600, "ttl_s": 14400, "rationale_required": true, "execute_within_s": 600} with input as _req("funds.transfer", "production", "account", {"amount": 1000000})
}

test_lifecycle_missing_or_bad_data_fails_safe if {
	authority.lifecycle == {"approval_window_s": 3600, "ttl_s": 14400, "rationale_required": true, "execute_within_s": 600} with input as _req("deploy.release", "production", "service", {"blast_radius": 40})
		with data.l7.config.authority.lifecycle as {"approval_window_s": {"high": "soon"}, "ttl_s": {"high": -1}, "execute_within_s": {"high": 0}}
}

test_execute_within_follows_the_band if {
	authority.execute_within_s == 3600 with input as _req("deploy.release", "production", "service", {})
		with data.l7.config.authority.lifecycle.execute_within_s as {"low": 7, "medium": 3600}
		with data.l7.risk.band as "medium"
}

test_execute_within_class_override_wins if {
	authority.execute_within_s == 120 with input as _req("data.read", "dev", "dataset", {})
		with data.l7.config.classes["data.read"].execute_within_s as {"low": 120}
}

test_execute_within_class_override_must_be_positive if {
	authority.execute_within_s == 14400 with input as _req("data.read", "dev", "dataset", {})
		with data.l7.config.classes["data.read"].execute_within_s as {"low": -5}
}
