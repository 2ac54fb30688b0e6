"""The OpenAI-compatible HTTP server for a chat model (:mod:`mmpo.models.chat`) or a reward model."""
