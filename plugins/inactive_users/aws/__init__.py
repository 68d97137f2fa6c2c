"""The AWS I/O shell through the amazon provider's hooks: CloudWatch Logs, RDS topology, S3 evidence."""
