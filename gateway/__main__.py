"""``python -m gateway`` is the ``mtls-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
