"""MedCloud analytics: the exchange's de-identified export as Parquet, SQL over it with DuckDB (docs/analytics.md)."""
