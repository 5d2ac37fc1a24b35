"""SQL catalog: ORM schema, engines, migrations and queries."""
