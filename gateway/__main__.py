"""``python -m gateway`` is the ``mtls-gateway`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
