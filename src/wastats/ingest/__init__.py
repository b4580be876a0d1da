"""Ingestion: the webhook inbox (group commit), the counting pipeline, import and recount."""
