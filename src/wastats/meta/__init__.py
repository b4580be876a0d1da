"""Meta's record (spec/meta-record.md): the Graph API client, the sync of `pricing_analytics`
into reported half-hour slots, and a fake Graph API for tests and the walk-through."""
