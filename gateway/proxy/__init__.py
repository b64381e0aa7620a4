"""The proxy: its pipeline stages (stages.py), routing (routes.py), forwarding (forward.py), config (config.py).

Nothing is imported here, so that gateway/proxy/config.py loads without the
runtime modules the stages need.
"""
