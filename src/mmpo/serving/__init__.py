"""Serving a saved causal LM: chat generation with the model's chat template and an OpenAI-compatible HTTP server."""
