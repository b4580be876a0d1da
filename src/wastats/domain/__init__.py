"""Domain services: accounts, credentials and tokens, numbers, statistics. No HTTP, no CLI."""
