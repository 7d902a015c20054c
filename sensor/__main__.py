import sys

from sensor.service import main

sys.exit(main())
