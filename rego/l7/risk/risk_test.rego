package l7.risk_test

import data.l7.risk

_req(cls, env, ttype, payload) := {
	"action": {"class": cls, "target": {"type": ttype, "id": "t-1"}, "payload": payload},
	"context": {"actor": {"id": "alice", "level": 1}, "environment": env},
}

test_low_risk_read_in_dev if {
	r := _req("data.read", "dev", "dataset", {})
	risk.score == 5 with input as r
	risk.band == "low" with input as r
	risk.reasons == ["action class data.read: base +5", "environment dev: +0"] with input as r
}

test_production_deploy_with_default_signals_is_medium if {
	r := _req("deploy.release", "production", "service", {})
	risk.score == 48 with input as r
	risk.band == "medium" with input as r
	risk.reasons == [
		"action class deploy.release: base +8",
		"environment production: +25",
		"sensitivity infrastructure: +10",
		"blast radius not given: class default 3 +5",
	] with input as r
}

test_large_blast_radius_raises_a_production_deploy_to_high if {
	r := _req("deploy.release", "production", "service", {"blast_radius": 40})
	risk.score == 63 with input as r
	risk.band == "high" with input as r
}

test_unknown_environment_is_scored_as_production_and_says_so if {
	moon := _req("deploy.release", "moon", "service", {})
	risk.score == 48 with input as moon
	"environment \"moon\" is missing or unknown: judged as production +25" in risk.reasons with input as moon
	missing := json.remove(moon, ["context/environment"])
	"environment (missing) is missing or unknown: judged as production +25" in risk.reasons with input as missing
}

test_big_transfer_is_critical_and_clamped if {
	r := _req("funds.transfer", "production", "account", {"amount": 1000000, "external": true})
	risk.score == 100 with input as r
	risk.band == "critical" with input as r
	risk.reasons == [
		"action class funds.transfer: base +20",
		"environment production: +25",
		"sensitivity funds: +20",
		"amount 1000000: +50",
		"payload.external is true: treated as external +10",
		"sum 125 clamped to 100",
	] with input as r
}

test_money_fails_safe if {
	# missing amount for a money-moving class: highest bucket
	missing := _req("funds.transfer", "dev", "account", {})
	"amount missing for action class funds.transfer, which moves money: highest bucket +50" in risk.reasons with input as missing
	risk.band == "critical" with input as missing

	# an amount that is not a non-negative number: highest bucket
	every bad in ["1000", -5, null, true] {
		risk.score == 90 with input as _req("funds.transfer", "dev", "account", {"amount": bad})
	}
	some reason in risk.reasons with input as _req("funds.transfer", "dev", "account", {"amount": "12"})
	reason == `amount "12" is not a non-negative number: highest bucket +50`

	# small amounts and no amount on other classes
	risk.score == 45 with input as _req("funds.transfer", "dev", "account", {"amount": 25})
	risk.score == 5 with input as _req("data.read", "dev", "dataset", {"amount": 0})
}

test_blast_radius_fails_safe if {
	every bad in ["huge", -1, null, [3]] {
		risk.score == 35 with input as _req("data.read", "dev", "dataset", {"blast_radius": bad})
	}
	some reason in risk.reasons with input as _req("data.read", "dev", "dataset", {"blast_radius": "huge"})
	reason == `blast radius "huge" is missing or not a non-negative number: worst bucket +30`
	risk.score == 15 with input as _req("data.read", "dev", "dataset", {"blast_radius": 12})
}

test_blast_radius_missing_everywhere_is_worst if {
	r := _req("data.read", "dev", "dataset", {})
	some reason in risk.reasons with input as r with data.l7.config.classes["data.read"].blast_radius as "x"
	reason == "blast radius (missing) is missing or not a non-negative number: worst bucket +30"
}

test_irreversibility if {
	"action class data.delete is irreversible: +15" in risk.reasons with input as _req("data.delete", "dev", "dataset", {})
	risk.score == 20 with input as _req("data.read", "dev", "dataset", {"irreversible": true})
	risk.score == 20 with input as _req("data.read", "dev", "dataset", {"irreversible": "no"})
	risk.score == 5 with input as _req("data.read", "dev", "dataset", {"irreversible": false})
	some reason in risk.reasons with input as _req("data.read", "dev", "dataset", {"irreversible": "no"})
	reason == `payload.irreversible is "no": treated as irreversible +15`
}

test_external_exposure if {
	risk.score == 15 with input as _req("data.read", "dev", "dataset", {"external": 1})
	risk.score == 5 with input as _req("data.read", "dev", "dataset", {"external": false})
	"action class data.read is externally exposed: +10" in risk.reasons with input as _req("data.read", "dev", "dataset", {})
		with data.l7.config.classes["data.read"].external as true
}

test_sensitivity_from_target_type_and_payload_can_only_raise if {
	r := _req("data.read", "staging", "dataset", {"sensitivity": ["pii", "credentials", "pii"]})
	risk.score == 55 with input as r
	risk.band == "high" with input as r
	risk.reasons == [
		"action class data.read: base +5",
		"environment staging: +10",
		"sensitivity credentials: +25",
		"sensitivity pii: +15",
	] with input as r

	# a tag already carried by the target type counts once
	risk.score == 48 with input as _req("deploy.release", "production", "service", {"sensitivity": ["infrastructure"]})
}

test_unknown_or_malformed_sensitivity_is_worst if {
	r := _req("data.read", "dev", "dataset", {"sensitivity": ["secret-sauce", 7]})
	risk.reasons == [
		"action class data.read: base +5",
		"environment dev: +0",
		"sensitivity 7 is unknown: treated as worst +25",
		`sensitivity "secret-sauce" is unknown: treated as worst +25`,
	] with input as r
	some reason in risk.reasons with input as _req("data.read", "dev", "dataset", {"sensitivity": "pii"})
	reason == `payload.sensitivity "pii" is not a list: treated as worst +25`
	risk.score == 30 with input as _req("data.read", "dev", "dataset", {"sensitivity": "pii"})
}

test_unknown_target_type_and_class_are_worst if {
	r := _req("rm.rf", "dev", "spaceship", {"blast_radius": 1})
	risk.reasons == [
		`action class "rm.rf" is unknown: base +50`,
		"environment dev: +0",
		`target type "spaceship" is unknown: treated as worst +25`,
	] with input as r
	risk.band == "high" with input as r
}

test_empty_input_is_critical if {
	risk.score == 100 with input as {}
	risk.band == "critical" with input as {}
}

test_band_edges_come_from_data_per_environment if {
	r := _req("data.read", "production", "dataset", {})
	risk.band == "medium" with input as r
	risk.band == "low" with input as r with data.l7.config.bands.production as {"medium": 40, "high": 60, "critical": 90}
	risk.band == "high" with input as r with data.l7.config.bands.production as {"medium": 10, "high": 30}
	risk.band == "critical" with input as r with data.l7.config.bands.production as {"critical": 30}
}

test_malformed_band_edges_fall_back_to_the_defaults if {
	r := _req("data.read", "production", "dataset", {})
	risk.band == "medium" with input as r with data.l7.config.bands.production as {"medium": "90"}
	risk.band == "medium" with input as r with data.l7.config.bands.production as 7
}

test_no_config_scores_on_the_safe_side if {
	r := _req("data.read", "dev", "dataset", {"blast_radius": 1})
	risk.score == 100 with input as r with data.l7.config as {}
	risk.band == "critical" with input as r with data.l7.config as {}
}
