"""The HTTP layer: routes only, calling the domain services."""
