"""The ``mtls-gateway`` command (``main.main``, also ``python -m gateway``) and its subcommands.

``main`` parses the command line and runs serve/check/certs/keys; ``clients``
manages a registry; ``quickstart`` and the dev PKI (``devpki``, ``devpki_issue``)
make a demo; ``echo`` is the built-in echo upstream it proxies to.
"""
