"""Database layer: the schema (``models``), engines and sessions (``session``) and the
Alembic upgrade entry point (``migrate``)."""
