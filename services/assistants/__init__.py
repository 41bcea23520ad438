"""The assistants service: the run engine behind parley.assistants.v1.AssistantService."""
