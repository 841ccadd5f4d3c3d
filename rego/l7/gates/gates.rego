# METADATA
# title: Layer-7 policy gates
# description: >-
#   Each gate is one rule carrying its own annotations; its result (and the
#   reason text the ledger stores) is built from them. Every gate always
#   yields a result: a gate that cannot establish its condition fails.
package l7.gates

import data.l7.lib

# list is every gate result, sorted by id (objects order by their "id" key first).
list := sort(results)

# all_passed holds only when there are gates and none of them failed.
default all_passed := false

all_passed if {
	count(results) > 0
	count(failed) == 0
}

# failed is the set of ids of failed gates.
failed contains g.id if {
	some g in results
	g.result != "pass"
}

# METADATA
# title: Request is complete and well-formed
# description: >-
#   The actor id and action class are non-empty strings, the actor level is
#   an integer 1-5, the target names a type and an id, and a payload, when
#   present, is an object. Missing actor or class means deny.
# custom:
#   short_name: input_complete
#   severity: critical
#   failure_msg: "request is incomplete or malformed: %s"
results contains lib.gate(rego.metadata.chain(), count(_input_problems) == 0, [concat(", ", sort(_input_problems))])

# The fields that must be present and valid. Validity is established by
# positive rules (_valid); a field is a problem when it is NOT shown valid, so
# a missing field is a problem too. (Never write `not f(input.x)`: OPA rewrites
# it to `t := input.x; not f(t)`, which is undefined, not true, when x is missing.)
_required := {
	"context.actor.id": "a non-empty string",
	"context.actor.level": "an integer 1-5",
	"action.class": "a non-empty string",
	"action.target.type": "a non-empty string",
	"action.target.id": "a non-empty string",
}

_valid contains "context.actor.id" if lib.non_empty_string(input.context.actor.id)

_valid contains "context.actor.level" if lib.valid_level(input.context.actor.level)

_valid contains "action.class" if lib.non_empty_string(input.action.class)

_valid contains "action.target.type" if lib.non_empty_string(input.action.target.type)

_valid contains "action.target.id" if lib.non_empty_string(input.action.target.id)

_input_problems contains sprintf("%s must be %s", [field, what]) if {
	some field, what in _required
	not field in _valid
}

_input_problems contains "action.payload must be an object when present" if lib.payload_malformed

# METADATA
# title: Action class is on the allowlist
# description: Only action classes configured in data.l7.config.classes may be requested.
# custom:
#   short_name: action_class_allowed
#   severity: critical
#   failure_msg: "action class %s is not on the allowlist"
results contains lib.gate(rego.metadata.chain(), _class_allowed, [lib.shown_class])

default _class_allowed := false

_class_allowed if lib.class_known

# METADATA
# title: Environment is served by this bundle
# description: >-
#   The effective environment must be one the deployed bundle serves
#   (data.l7.deployment.environments). A bundle without deployment data
#   serves nothing.
# custom:
#   short_name: environment_served
#   severity: critical
#   failure_msg: "environment %s is not served by this bundle (serves %s)"
results contains lib.gate(rego.metadata.chain(), _environment_served, [lib.environment, _served_shown])

default _environment_served := false

_environment_served if lib.environment in data.l7.deployment.environments

default _served_shown := "nothing: no deployment data"

_served_shown := lib.show(data.l7.deployment.environments)

# METADATA
# title: Action class is allowed in this environment
# description: The action class's configured environments must include the effective environment.
# custom:
#   short_name: environment_allowed
#   severity: high
#   failure_msg: "action class %s is not allowed in environment %s"
results contains lib.gate(rego.metadata.chain(), _environment_allowed, [lib.shown_class, lib.environment])

default _environment_allowed := false

_environment_allowed if lib.environment in lib.class_config.environments

# METADATA
# title: Target type is allowed for the action class
# description: The target type must be one of the action class's configured target types.
# custom:
#   short_name: target_type_allowed
#   severity: high
#   failure_msg: "target type %s is not allowed for action class %s"
results contains lib.gate(rego.metadata.chain(), _target_type_allowed, [lib.shown_target_type, lib.shown_class])

default _target_type_allowed := false

_target_type_allowed if {
	lib.non_empty_string(input.action.target.type)
	input.action.target.type in lib.class_config.target_types
}

# METADATA
# title: Tool is on the allowlist for the action class
# description: >-
#   A request that names the tool performing it must name one its action class
#   lists under tools; a class with tool_required refuses requests naming none.
# custom:
#   short_name: tool_allowed
#   severity: critical
#   failure_msg: "tool %s is not on the allowlist for action class %s"
results contains lib.gate(rego.metadata.chain(), _tool_allowed, [lib.shown_tool, lib.shown_class])

default _tool_allowed := false

_tool_allowed if {
	not lib.tool_named
	not lib.class_config.tool_required
}

_tool_allowed if {
	lib.tool_named
	input.action.tool in lib.class_config.tools
}

# METADATA
# title: Requester level is high enough for the action class
# description: >-
#   The actor's level must be a valid level 1-5 and at least the action
#   class's min_requester_level (default 1).
# custom:
#   short_name: requester_level
#   severity: high
#   failure_msg: "actor level %s is below the minimum L%v for action class %s"
results contains lib.gate(rego.metadata.chain(), _requester_level_ok, [lib.shown_level, _min_level, lib.shown_class])

default _requester_level_ok := false

_requester_level_ok if {
	lib.valid_level(input.context.actor.level)
	input.context.actor.level >= _min_level
}

_min_level := object.get(lib.class_config, "min_requester_level", 1)

# METADATA
# title: Secret references are within the actor's reach
# description: >-
#   Requests carry secrets only as references (vault:<mount>/<path>#<field>@<version>);
#   the engine resolves their metadata (never the value) into input.secrets. Each
#   reference must exist and lie under a prefix that data.l7.config.secrets.ref_prefixes
#   grants the actor's role ("*" applies to every role). No references: passes.
# custom:
#   short_name: secret_refs_allowed
#   severity: critical
#   failure_msg: "secret references %s are missing or outside what role %s may use"
results contains lib.gate(rego.metadata.chain(), count(_bad_refs) == 0, [sort(_bad_refs), lib.show(_role)])

default _role := ""

_role := input.context.actor.role if is_string(input.context.actor.role)

default _secrets := []

_secrets := input.secrets if is_array(input.secrets)

_ref_prefixes := array.concat(
	lib.param(["secrets", "ref_prefixes", "*"], []),
	lib.param(["secrets", "ref_prefixes", _role], []),
)

_bad_refs contains sprintf("%v", [r.ref]) if {
	some r in _secrets
	not _ref_ok(r)
}

_ref_ok(r) if {
	r.exists == true
	some prefix in _ref_prefixes
	startswith(concat("/", [r.mount, r.path]), prefix)
}
