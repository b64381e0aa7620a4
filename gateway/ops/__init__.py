"""Running the gateway for operators.

* ``admin``: the admin listener (plain HTTP on loopback, for probes and scrapes);
* ``metrics``, ``state_metrics``, ``worker_metrics``: the Prometheus series, those
  read at scrape time (reloads, expiry dates, registry state), and the per-worker
  counters;
* ``observability``, ``logs``, ``logfmt``: the access log, logging set-up, log formats;
* ``throttle``: rate-limited warnings (one line per interval, then how many were held back);
* ``config``: the ``admin`` and ``logging`` sections.
"""
