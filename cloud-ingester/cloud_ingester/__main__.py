"""`python -m cloud_ingester --config ingester.toml`"""

import sys

from cloud_ingester.service import main

sys.exit(main())
