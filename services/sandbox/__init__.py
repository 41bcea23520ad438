"""The sandbox service (code execution for the code interpreter).

Only its contract exists so far (protos/parley/sandbox/v1); the server arrives with the code
interpreter's own issue and will be bootstrapped like every other service
(services.runtime.server.run).
"""
