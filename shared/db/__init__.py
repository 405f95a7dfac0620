"""PostgreSQL: the engine, the tables, the store of compare-and-set transitions, migrations."""
