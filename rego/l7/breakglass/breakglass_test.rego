package l7.breakglass_test

import data.l7.breakglass

_ok := {
	"actor": {"id": "sec1", "level": 4},
	"reason": {"incident_id": "INC-1", "category": "outage", "text": "payments API down, rollback needed"},
	"ttl_s": 600,
	"scope": {"action_class": "deploy.release", "target": {"type": "service", "id": "payments-api"}},
	"overdue_reviews": 0,
}

test_l4_with_a_structured_reason_is_allowed if {
	breakglass.result == {
		"allowed": true, "problems": [], "ttl_s": 600, "review_within_s": 86400,
		"secret_ref_prefixes": [], "widened_secret_ref_prefixes": [],
	} with input as _ok
}

test_secret_prefixes_are_the_roles_own_unless_policy_widens_them if {
	cfg := {"secrets": {"ref_prefixes": {"*": ["secret/shared/"], "security": ["secret/app/"]}}}
	r := breakglass.result with input as object.union(_ok, {"actor": {"id": "sec1", "level": 4, "roles": ["security", "ops"]}})
		with data.l7.config as cfg
	r.secret_ref_prefixes == ["secret/app/", "secret/shared/"]
	r.widened_secret_ref_prefixes == []
	wide := object.union(cfg, {"breakglass": {"allowed_levels": [4], "secret_ref_prefixes": {"ops": ["secret/incident/", "secret/app/"], "other": ["secret/"]}}})
	w := breakglass.result with input as object.union(_ok, {"actor": {"id": "sec1", "level": 4, "roles": ["security", "ops"]}})
		with data.l7.config as wide
	w.secret_ref_prefixes == ["secret/app/", "secret/incident/", "secret/shared/"]
	w.widened_secret_ref_prefixes == ["secret/incident/"]
}

test_l3_is_refused if {
	r := breakglass.result with input as object.union(_ok, {"actor": {"id": "m", "level": 3}})
	not r.allowed
	r.problems == ["break-glass needs level [4, 5]; the actor is 3"]
}

test_missing_or_malformed_reason_is_refused if {
	bad := object.union(object.remove(_ok, ["reason"]), {"reason": {"category": "boredom", "text": "x"}})
	r := breakglass.result with input as bad
	not r.allowed
	r.problems == [
		"reason.category \"boredom\" is not one of [\"security_incident\", \"outage\", \"data_loss\", \"legal_hold\"]",
		"reason.incident_id is required",
		"reason.text must describe the emergency in at least 20 characters",
	]
}

test_ttl_above_cap_is_clipped_by_default if {
	r := breakglass.result with input as object.union(_ok, {"ttl_s": 7200})
	r.allowed
	r.ttl_s == 3600
}

test_ttl_above_cap_is_refused_when_policy_says_so if {
	r := breakglass.result with input as object.union(_ok, {"ttl_s": 7200})
		with data.l7.config.breakglass.ttl_over_cap as "refuse"
	not r.allowed
	r.problems == ["ttl_s 7200 exceeds the policy cap of 3600 seconds"]
}

test_zero_or_missing_ttl_is_refused if {
	r := breakglass.result with input as object.remove(_ok, ["ttl_s"])
	not r.allowed
	r.ttl_s == 0
	"ttl_s must be a positive number of seconds" in r.problems
}

test_unscoped_is_refused if {
	r := breakglass.result with input as object.remove(_ok, ["scope"])
	"scope.action_class and scope.target (type, id) are required" in r.problems
}

test_overdue_review_blocks_the_next_one if {
	r := breakglass.result with input as object.union(_ok, {"overdue_reviews": 1})
	r.problems == ["the actor has a break-glass whose review is overdue; it must be reviewed first"]
}

test_empty_input_is_refused_with_every_problem if {
	r := breakglass.result with input as {}
	not r.allowed
	count(r.problems) == 7
}

test_no_config_means_only_l5_and_no_categories if {
	r := breakglass.result with input as _ok with data.l7.config as {}
	not r.allowed
	"break-glass needs level [5]; the actor is 4" in r.problems
}
