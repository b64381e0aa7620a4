"""Client registries: where the gateway looks up who a certificate belongs to.

The ``Registry`` protocol is in base.py, the client model in model.py, the
matching rules in matching.py; nothing is imported here, so that
gateway/registry/config.py loads without them.
"""
