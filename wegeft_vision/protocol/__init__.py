"""The search-then-final protocol."""
