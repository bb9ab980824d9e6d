"""The `router` command."""
