package l7.lib

# The normalized view of the request and of the policy parameters. Every rule
# here is total (defaults or else), so a missing or mistyped field never makes
# the decision undefined; it falls to the safe side instead.

# known_environments is the closed set of environments the policy judges.
known_environments := {"dev", "staging", "production"}

# config is data.l7.config, or {} when the bundle carries none.
default config := {}

config := data.l7.config if is_object(data.l7.config)

# param(path, fallback) reads a parameter from config with a fallback.
param(path, fallback) := object.get(config, path, fallback)

# environment is the effective environment: missing or unknown means production.
default environment := "production"

environment := input.context.environment if environment_known

# environment_known holds when the request names one of the known environments.
environment_known if input.context.environment in known_environments

# class_known holds when the action class is configured (that is, allowlisted).
class_known if {
	is_string(input.action.class)
	is_object(config.classes[input.action.class])
}

# class_config is the action class's parameters, or {} when it is unknown.
default class_config := {}

class_config := config.classes[input.action.class] if class_known

# payload is the action payload, or {} when it is missing or not an object.
default payload := {}

payload := input.action.payload if is_object(input.action.payload)

# payload_malformed holds when a payload is present but is not an object.
payload_malformed if {
	p := input.action.payload
	not is_object(p)
}

# shown_* render request fields for messages, "(missing)" when absent.
default shown_class := "(missing)"

shown_class := show(input.action.class)

default shown_environment := "(missing)"

shown_environment := show(input.context.environment)

default shown_target_type := "(missing)"

shown_target_type := show(input.action.target.type)

default shown_tool := "(none)"

shown_tool := show(input.action.tool)

# tool_named holds when the request names the tool performing the action.
tool_named if object.get(object.get(input, "action", {}), "tool", "") != ""

default shown_level := "(missing)"

shown_level := show(input.context.actor.level)
