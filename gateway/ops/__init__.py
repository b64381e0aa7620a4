"""Running the gateway for operators: the admin port and logging (gateway/admin.py, gateway/logs.py)."""
