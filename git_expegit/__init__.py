"""git expegit: campaign repositories of executions (being built)."""
