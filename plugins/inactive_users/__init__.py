"""inactive_users: find dormant PostgreSQL login roles from connection logs and lock or drop them."""

__version__ = "0.2.0"
