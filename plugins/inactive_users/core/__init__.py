"""The pure core: parsing, policy, settings, config and alert text; plain data in and out, no I/O."""
