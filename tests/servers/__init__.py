"""Real servers the tests run on this machine (built from Go modules, cached outside the repo)."""
