"""Results: the schema, the store, comparisons, regressions and reports.  Never imports torch."""
