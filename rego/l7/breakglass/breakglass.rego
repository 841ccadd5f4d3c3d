# METADATA
# title: Layer-7 break-glass
# description: >-
#   Emergency access: who may open it, with what structured reason, for how
#   long, and by when it must be reviewed. Break-glass never bypasses the
#   ledger; it is an explicit, short, scoped authorization that the engine
#   records and a different L4/L5 must review.
package l7.breakglass

import data.l7.lib

_cfg := lib.param(["breakglass"], {})

_allowed_levels := object.get(_cfg, "allowed_levels", [5])

_categories := object.get(_cfg, "categories", [])

_max_ttl := object.get(_cfg, "max_ttl_s", 900)

_over_cap := object.get(_cfg, "ttl_over_cap", "refuse")

_min_reason := object.get(_cfg, "min_reason_chars", 20)

# result is the judgement on a break-glass request; always defined.
result := {
	"allowed": count(problems) == 0,
	"problems": sort(problems),
	"ttl_s": ttl_s,
	"review_within_s": object.get(_cfg, "review_within_s", 86400),
	"secret_ref_prefixes": sort(secret_ref_prefixes),
	"widened_secret_ref_prefixes": sort(widened_secret_ref_prefixes),
}

# secret_ref_prefixes is where the break-glass grant may resolve secret references: what
# data.l7.config.secrets.ref_prefixes grants the actor's roles ("*" and each of
# input.actor.roles), widened only by breakglass.secret_ref_prefixes for those roles.
# No roles and no widening: nothing (the gateway then resolves no reference).
secret_ref_prefixes := _role_prefixes | widened_secret_ref_prefixes

# widened_secret_ref_prefixes lists the prefixes break-glass adds beyond the roles' own.
widened_secret_ref_prefixes contains p if {
	some r in _roles
	some p in object.get(_cfg, ["secret_ref_prefixes", r], [])
	is_string(p)
	not p in _role_prefixes
}

_roles contains r if {
	some r in object.get(input, ["actor", "roles"], [])
	is_string(r)
}

_role_prefixes contains p if {
	some p in lib.param(["secrets", "ref_prefixes", "*"], [])
	is_string(p)
}

_role_prefixes contains p if {
	some r in _roles
	some p in lib.param(["secrets", "ref_prefixes", r], [])
	is_string(p)
}

# problems lists every reason the request is refused (empty when allowed).
problems contains msg if {
	not _level_allowed
	msg := sprintf("break-glass needs level %v; the actor is %v", [_allowed_levels, lib.show(object.get(input, ["actor", "level"], null))])
}

problems contains "reason.incident_id is required" if not _has_incident

problems contains msg if {
	not _category_known
	msg := sprintf("reason.category %v is not one of %v", [lib.show(object.get(input, ["reason", "category"], null)), _categories])
}

problems contains msg if {
	not _text_long_enough
	msg := sprintf("reason.text must describe the emergency in at least %v characters", [_min_reason])
}

problems contains "scope.action_class and scope.target (type, id) are required" if not _scoped

problems contains "ttl_s must be a positive number of seconds" if not _ttl_given

problems contains msg if {
	_positive(input.ttl_s)
	input.ttl_s > _max_ttl
	_over_cap != "clip"
	msg := sprintf("ttl_s %v exceeds the policy cap of %v seconds", [input.ttl_s, _max_ttl])
}

problems contains "the actor has a break-glass whose review is overdue; it must be reviewed first" if {
	not _no_overdue
}

# ttl_s is the granted window: the request, clipped to the cap (when policy clips).
default ttl_s := 0

ttl_s := min([input.ttl_s, _max_ttl]) if _positive(input.ttl_s)

# Positive facts about the input: each is false (never undefined) when a field is
# missing, so the problems above negate them safely.
_level_allowed if input.actor.level in _allowed_levels

_has_incident if _nonempty(input.reason.incident_id)

_category_known if input.reason.category in _categories

_text_long_enough if _long_enough(input.reason.text)

_ttl_given if _positive(input.ttl_s)

_no_overdue if input.overdue_reviews == 0

_nonempty(s) if {
	is_string(s)
	trim_space(s) != ""
}

_long_enough(s) if {
	is_string(s)
	count(trim_space(s)) >= _min_reason
}

_positive(n) if {
	is_number(n)
	n > 0
}

_scoped if {
	_nonempty(input.scope.action_class)
	_nonempty(input.scope.target.type)
	_nonempty(input.scope.target.id)
}
