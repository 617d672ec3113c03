"""PostgreSQL storage: tables, migrations, the resource repository. Data functions never commit:
the caller (one request, one transaction) owns the transaction."""
