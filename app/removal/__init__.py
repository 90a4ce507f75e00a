"""A background removal from submission to answer: options, input, the typed job, rendering, the response."""
