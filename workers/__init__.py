"""RQ job functions and the worker entry point: thin wrappers that parse a request, call the
engine in `app` and report progress. The queue wiring arrives with the REST service."""
