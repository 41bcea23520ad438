"""The sandbox service: a long-lived Python kernel per session, behind bubblewrap, seccomp,
cgroups and rlimits, for the assistants' code interpreter (docs/sandbox.md)."""
