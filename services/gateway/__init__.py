"""The gateway: Parley's only public door. It authenticates callers (API keys, JWTs), checks
scopes, limits rates, cleans inputs and forwards each call as raw bytes to the backend that
serves it, with a freshly minted internal identity in place of the caller's credential."""
