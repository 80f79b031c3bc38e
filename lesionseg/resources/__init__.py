"""Package data: the model-spec JSON schema and the built-in model specs (read with importlib.resources)."""
