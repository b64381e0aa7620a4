"""Whom a certificate names and who vouches for it: pure functions over X.509."""
