"""The ``stockade`` operator CLI (PowerShell-style ``Verb-Noun`` cmdlets over the REST API)."""
