"""The mtls-gateway command and its subcommands."""
