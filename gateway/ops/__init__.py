"""Running the gateway for operators: the admin port and logging (gateway/ops/admin.py, gateway/ops/logs.py)."""
