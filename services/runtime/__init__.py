"""The runtime every Parley server shares: bootstrap, errors, identity, config, database,
pagination, telemetry and logs. Domain code may import `errors`, `validation` and
`pagination`; only servicers and the bootstrap touch grpc."""
