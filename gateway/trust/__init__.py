"""Whom a certificate names and who vouches for it: pure functions over X.509.

* ``identity``: certificate DER → identity (subject, SANs, thumbprints);
* ``dn``: distinguished names in the IdentityServer form and as comparison keys;
* ``spiffe``: SPIFFE IDs, patterns and the X.509-SVID leaf rules;
* ``chain``: path verification per trust pool (``client_ca``, SPIFFE bundles);
* ``forwarded``: the client-certificate headers a TLS-terminating proxy sends.

Nothing here reads files or sockets; the listener's trust material
(gateway/listener/tls_material.py) and the authenticator (gateway/auth/)
build on it.
"""
