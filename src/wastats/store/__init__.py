"""Storage: the schema, migrations, and repository functions (all SQL lives in this package)."""
