"""HTTP plumbing under every route: middleware, server options, shutdown, request context, metrics, logs, error rendering."""
