"""wastats: self-hosted statistics for WhatsApp Business numbers.

Webhooks in (`wastats.ingest`), exact counts by a versioned rulebook (`wastats.counting`), served
through a compatible partners API and a modern API (`wastats.api`). Start at `wastats.app`.
"""

__version__ = "0.1.0"
