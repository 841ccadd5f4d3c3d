# METADATA
# title: Layer-7 risk score
# description: >-
#   A deterministic score 0-100: the sum of weighted signals from data
#   (action class, environment, sensitivity, blast radius, irreversibility,
#   money, external exposure), clamped, with one reason per contribution and
#   a band from per-environment edges. A missing or unknown signal is scored
#   on the safe (higher) side, never the lower.
package l7.risk

import data.l7.lib

# score is the clamped sum of all contributions (an integer 0..100).
score := lib.clamp(_raw, 0, 100)

# band is low < medium < high < critical, from the effective environment's edges.
default band := "critical"

band := "critical" if {
	score >= _edges.critical
} else := "high" if {
	score >= _edges.high
} else := "medium" if {
	score >= _edges.medium
} else := "low"

# reasons explains the score, one line per contribution, in signal order.
reasons := array.concat([c.reason | some c in contributions], _clamp_note)

# contributions lists {points, reason}: class base and environment always,
# then sensitivity tags, then the other signals when they add points.
contributions := array.concat(array.concat([_class_base, _environment], _sensitivity), _others)

_others := [c | some c in [_blast_radius, _irreversible, _money, _external]; c.points > 0]

_raw := sum([c.points | some c in contributions])

_clamp_note := [sprintf("sum %v clamped to 100", [_raw])] if _raw > 100

else := []

# -- parameters (data.l7.config.weights, with safe fallbacks) ---------------------------

_default_edges := {"medium": 25, "high": 55, "critical": 85}

# _edges are the environment's band edges; malformed edges fall back to the defaults.
_edges := e if {
	e := object.union(_default_edges, lib.param(["bands", lib.environment], {}))
	every k in ["medium", "high", "critical"] {
		is_number(e[k])
	}
} else := _default_edges

_env_weights := lib.param(["weights", "environment"], {"dev": 0, "staging": 10, "production": 25})

_tag_weights := lib.param(
	["weights", "sensitivity"],
	{"pii": 15, "credentials": 25, "funds": 20, "infrastructure": 10},
)

# _worst_tag is the weight charged for a tag or target type we cannot classify.
_worst_tag := max(array.concat([0], [w | some w in _tag_weights]))

_blast_buckets := lib.param(["weights", "blast_radius"], [{"min": 0, "points": 30}])

_amount_buckets := lib.param(["weights", "amount"], [{"min": 0, "points": 50}])

# -- action class ------------------------------------------------------------------------

_unknown_class_base := lib.param(["weights", "unknown_class_base"], 50)

_class_base := {"points": p, "reason": sprintf("action class %s: base +%v", [input.action.class, p])} if {
	lib.class_known
	p := object.get(lib.class_config, "base", _unknown_class_base)
} else := {
	"points": _unknown_class_base,
	"reason": sprintf("action class %s is unknown: base +%v", [lib.shown_class, _unknown_class_base]),
}

# -- environment -------------------------------------------------------------------------

_env_weight := object.get(_env_weights, lib.environment, max(array.concat([0], [w | some w in _env_weights])))

_environment := {"points": _env_weight, "reason": sprintf("environment %s: +%v", [lib.environment, _env_weight])} if {
	lib.environment_known
} else := {
	"points": _env_weight,
	"reason": sprintf(
		"environment %s is missing or unknown: judged as production +%v",
		[lib.shown_environment, _env_weight],
	),
}

# -- sensitivity -------------------------------------------------------------------------

_target_type_config := c if {
	c := lib.config.target_types[input.action.target.type]
	is_object(c)
}

_tags contains t if some t in _target_type_config.sensitivity

_tags contains t if {
	is_array(lib.payload.sensitivity)
	some t in lib.payload.sensitivity
}

_sensitivity := array.concat(array.concat(_known_tags, _unknown_tags), _unclassified)

_known_tags := [{"points": _tag_weights[t], "reason": sprintf("sensitivity %s: +%v", [t, _tag_weights[t]])} |
	some t in sort(_tags)
	is_string(t)
	_tag_weights[t]
]

_unknown_tags := [c |
	some t in sort(_tags)
	not _tag_weights[t]
	c := {"points": _worst_tag, "reason": sprintf("sensitivity %s is unknown: treated as worst +%v", [lib.show(t), _worst_tag])}
]

_unclassified := array.concat(_unknown_target_type, _malformed_tags)

_unknown_target_type := [] if _target_type_config

else := [{
	"points": _worst_tag,
	"reason": sprintf("target type %s is unknown: treated as worst +%v", [lib.shown_target_type, _worst_tag]),
}]

_malformed_tags := [{
	"points": _worst_tag,
	"reason": sprintf("payload.sensitivity %s is not a list: treated as worst +%v", [lib.show(lib.payload.sensitivity), _worst_tag]),
}] if {
	"sensitivity" in object.keys(lib.payload)
	not is_array(lib.payload.sensitivity)
} else := []

# -- blast radius ------------------------------------------------------------------------

_blast_radius := {"points": p, "reason": sprintf("blast radius %v: +%v", [v, p])} if {
	v := lib.payload.blast_radius
	p := lib.bucket_points(_blast_buckets, v)
} else := {"points": p, "reason": sprintf("blast radius not given: class default %v +%v", [v, p])} if {
	not "blast_radius" in object.keys(lib.payload)
	v := lib.class_config.blast_radius
	p := lib.bucket_points(_blast_buckets, v)
} else := {
	"points": lib.worst_points(_blast_buckets),
	"reason": sprintf(
		"blast radius %s is missing or not a non-negative number: worst bucket +%v",
		[_shown_payload("blast_radius"), lib.worst_points(_blast_buckets)],
	),
}

# -- irreversibility ---------------------------------------------------------------------

_irreversible_weight := lib.param(["weights", "irreversible"], 15)

_irreversible := {
	"points": _irreversible_weight,
	"reason": sprintf("action class %s is irreversible: +%v", [input.action.class, _irreversible_weight]),
} if {
	lib.class_config.irreversible == true
} else := {
	"points": _irreversible_weight,
	"reason": sprintf("payload.irreversible is %s: treated as irreversible +%v", [lib.show(lib.payload.irreversible), _irreversible_weight]),
} if {
	"irreversible" in object.keys(lib.payload)
	lib.payload.irreversible != false
} else := {"points": 0, "reason": "reversible"}

# -- money -------------------------------------------------------------------------------

_money := {"points": p, "reason": sprintf("amount %v: +%v", [v, p])} if {
	v := lib.payload.amount
	p := lib.bucket_points(_amount_buckets, v)
} else := {
	"points": lib.worst_points(_amount_buckets),
	"reason": sprintf(
		"amount %s is not a non-negative number: highest bucket +%v",
		[lib.show(lib.payload.amount), lib.worst_points(_amount_buckets)],
	),
} if {
	"amount" in object.keys(lib.payload)
} else := {
	"points": lib.worst_points(_amount_buckets),
	"reason": sprintf(
		"amount missing for action class %s, which moves money: highest bucket +%v",
		[input.action.class, lib.worst_points(_amount_buckets)],
	),
} if {
	lib.class_config.amount_required == true
} else := {"points": 0, "reason": "no money at stake"}

# -- external exposure -------------------------------------------------------------------

_external_weight := lib.param(["weights", "external"], 10)

_external := {
	"points": _external_weight,
	"reason": sprintf("action class %s is externally exposed: +%v", [input.action.class, _external_weight]),
} if {
	lib.class_config.external == true
} else := {
	"points": _external_weight,
	"reason": sprintf("payload.external is %s: treated as external +%v", [lib.show(lib.payload.external), _external_weight]),
} if {
	"external" in object.keys(lib.payload)
	lib.payload.external != false
} else := {"points": 0, "reason": "internal"}

# -- rendering ---------------------------------------------------------------------------

default _shown_payload(_) := "(missing)"

_shown_payload(key) := lib.show(lib.payload[key])
