"""Process-wide configuration shared by the api, the workers and the CLI."""
