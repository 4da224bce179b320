"""The REST API: routes by resource, shared dependencies, the job view."""
