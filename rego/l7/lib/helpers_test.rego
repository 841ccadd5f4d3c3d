package l7.lib_test

import data.l7.lib

test_non_empty_string if {
	lib.non_empty_string("alice")
	not lib.non_empty_string("")
	not lib.non_empty_string("  \t")
	not lib.non_empty_string(7)
	not lib.non_empty_string(null)
	not lib.non_empty_string(["alice"])
}

test_valid_level if {
	every l in [1, 2, 3, 4, 5] {
		lib.valid_level(l)
	}
	every l in [0, 6, 2.5, -1, "3", true, null, [3]] {
		not lib.valid_level(l)
	}
}

_buckets := [{"min": 0, "points": 0}, {"min": 10, "points": 5}, {"min": 100, "points": 20}]

test_bucket_points_picks_the_highest_bucket_reached if {
	lib.bucket_points(_buckets, 0) == 0
	lib.bucket_points(_buckets, 9.5) == 0
	lib.bucket_points(_buckets, 10) == 5
	lib.bucket_points(_buckets, 1000000) == 20
}

test_bucket_points_is_undefined_for_invalid_values if {
	not lib.bucket_points(_buckets, -1)
	not lib.bucket_points(_buckets, "1000")
	not lib.bucket_points(_buckets, true)
	not lib.bucket_points(_buckets, null)
}

test_worst_points if {
	lib.worst_points(_buckets) == 20
	lib.worst_points([]) == 0
}

test_clamp if {
	lib.clamp(-5, 0, 100) == 0
	lib.clamp(42, 0, 100) == 42
	lib.clamp(125, 0, 100) == 100
}

test_show if {
	lib.show("rm.rf") == `"rm.rf"`
	lib.show(3) == "3"
	lib.show({"a": [1]}) == `{"a":[1]}`
}

_chain := [{"annotations": {
	"title": "Thing is fine",
	"custom": {"short_name": "thing_ok", "severity": "high", "failure_msg": "thing %s is %s"},
}}]

test_gate_pass_uses_the_title if {
	lib.gate(_chain, true, ["x", "y"]) == {
		"id": "thing_ok",
		"title": "Thing is fine",
		"result": "pass",
		"reason": "Thing is fine",
		"severity": "high",
	}
}

test_gate_fail_formats_the_failure_message if {
	lib.gate(_chain, false, ["x", "broken"]) == {
		"id": "thing_ok",
		"title": "Thing is fine",
		"result": "fail",
		"reason": "thing x is broken",
		"severity": "high",
	}
}
