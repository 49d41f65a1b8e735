"""Console pages, one blueprint per audience."""
