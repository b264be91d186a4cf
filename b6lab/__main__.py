"""`python -m b6lab`: what torchrun starts (`torchrun --nproc-per-node N -m b6lab train ...`)."""

import sys

from b6lab.cli import main

sys.exit(main())
