"""The edge's process: settings to a running server (composition root, listeners, lifecycle), and the
request handler that walks a request through admission, routing and transport."""
