"""The model registry and job tracking: SQLAlchemy tables, repositories and migrations."""
