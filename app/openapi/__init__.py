"""/openapi.json: the document, its option schemas built from the option table."""
