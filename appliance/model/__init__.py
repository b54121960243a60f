"""The site.yaml model: schema, loader with line/column marks, semantic validation."""
