import sys

from gateway.ble.service import main

sys.exit(main())
