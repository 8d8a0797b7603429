"""FHIR Bulk Data ``$export`` from the consortium exchange, de-identified before anything leaves (docs/analytics.md)."""
