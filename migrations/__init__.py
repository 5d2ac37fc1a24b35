"""Alembic migrations of the protodb catalog (installed as the package ``protodb_migrations``)."""
