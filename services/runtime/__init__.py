"""The runtime every Parley server shares: bootstrap, interceptors, the request check, errors
and their status mapping, identity, config, database, pagination, uploads, telemetry, metrics
and logs (docs/runtime.md). Domain code may import `errors`, `validation`, `pagination` and
`db`; only servicers and the bootstrap touch grpc."""
