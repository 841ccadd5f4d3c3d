package l7.lib_test

import data.l7.lib

_input := {
	"action": {
		"class": "data.read",
		"target": {"type": "dataset", "id": "orders"},
		"payload": {"blast_radius": 1},
	},
	"context": {"actor": {"id": "alice", "level": 1}, "environment": "staging"},
}

test_known_environment_is_kept if {
	lib.environment == "staging" with input as _input
	lib.environment_known with input as _input
}

test_unknown_or_missing_environment_is_production if {
	every env in ["moon", "", 7, null, ["dev"], "Production"] {
		lib.environment == "production" with input.context.environment as env with input.action as {}
		not lib.environment_known with input.context.environment as env with input.action as {}
	}
	lib.environment == "production" with input as {}
	not lib.environment_known with input as {}
	lib.environment == "production" with input as "not an object"
}

test_class_config_for_a_known_class if {
	lib.class_known with input as _input
	lib.class_config.base == data.l7.config.classes["data.read"].base with input as _input
}

test_class_config_is_empty_for_unknown_or_mistyped_classes if {
	every cls in ["rm.rf", "", 7, null, ["data.read"], {"data.read": true}] {
		not lib.class_known with input.action.class as cls
		lib.class_config == {} with input.action.class as cls
	}
	lib.class_config == {} with input as {}
}

test_payload if {
	lib.payload == {"blast_radius": 1} with input as _input
	not lib.payload_malformed with input as _input
	lib.payload == {} with input as {}
	not lib.payload_malformed with input as {}
	every bad in ["x", 1, null, false, []] {
		lib.payload == {} with input.action.payload as bad
		lib.payload_malformed with input.action.payload as bad
	}
}

test_config_and_param_without_data if {
	lib.config == {} with data.l7.config as "oops"
	lib.param(["weights", "external"], 99) == 99 with data.l7.config as "oops"
	lib.param(["weights", "external"], 99) == data.l7.config.weights.external
}

test_shown_fields if {
	lib.shown_class == `"data.read"` with input as _input
	lib.shown_environment == `"staging"` with input as _input
	lib.shown_target_type == `"dataset"` with input as _input
	lib.shown_level == "1" with input as _input
	lib.shown_class == "(missing)" with input as {}
	lib.shown_environment == "(missing)" with input as {}
	lib.shown_target_type == "(missing)" with input as {}
	lib.shown_level == "(missing)" with input as {}
}
