"""The Postgres I/O shell: catalog reads, state tables, actions and sessions on every instance."""
