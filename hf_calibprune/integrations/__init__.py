"""Glue to other libraries' plugin APIs, kept apart because those APIs change between releases."""
