"""One module per vendor; each translates the provider-neutral request and stream in one place."""
