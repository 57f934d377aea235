"""``python -m deephealth.cli``: the same as the ``deephealth`` command."""

import sys

from deephealth.cli import main

sys.exit(main())
