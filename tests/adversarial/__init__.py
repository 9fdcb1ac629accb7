"""The project's adversarial corpus (issue 20) and the tests that run it against the CLI and the service."""
