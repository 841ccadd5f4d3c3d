# METADATA
# title: Layer-7 shared helpers
# description: >-
#   Small, total helpers shared by the l7 packages: value checks, bucket
#   lookups, clamping, and the gate result builder that reads a rule's
#   annotations so the reason text comes from policy.
package l7.lib

# non_empty_string(x) holds when x is a string with a non-blank character.
non_empty_string(x) if {
	is_string(x)
	trim_space(x) != ""
}

# valid_level(x) holds when x is an integer authority level 1..5.
valid_level(x) if {
	is_number(x)
	x == round(x)
	x >= 1
	x <= 5
}

# bucket_points(buckets, v) is the points of the highest bucket whose min <= v.
# Undefined for a non-number or a value below every bucket, so callers fall
# through to their worst case.
bucket_points(buckets, v) := max([b.points | some b in buckets; b.min <= v]) if is_number(v)

# worst_points(buckets) is the largest points value of any bucket (0 when empty).
worst_points(buckets) := max(array.concat([0], [b.points | some b in buckets]))

# clamp(x, lo, hi) bounds x to [lo, hi].
clamp(x, lo, hi) := min([max([x, lo]), hi])

# show(x) renders any value for a message (strings keep their quotes).
show(x) := json.marshal(x)

# gate(chain, passed, details) builds a gate result from the annotations of the
# rule that called it (rego.metadata.chain()[0]). A failing gate's reason is
# custom.failure_msg formatted with details; a passing gate's reason is its title.
gate(chain, true, _) := _gate_result(chain[0].annotations, "pass", chain[0].annotations.title)

gate(chain, false, details) := _gate_result(
	chain[0].annotations,
	"fail",
	sprintf(chain[0].annotations.custom.failure_msg, details),
)

_gate_result(ann, result, reason) := {
	"id": ann.custom.short_name,
	"title": ann.title,
	"result": result,
	"reason": reason,
	"severity": ann.custom.severity,
}
