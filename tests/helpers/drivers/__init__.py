"""Scripts the tests run as separate processes: Modal's generated modules define the same proto
names as router's, and protobuf refuses a second definition in one process. Neither imports
`router`; importing this package imports neither script."""
from __future__ import annotations

import pathlib

_HERE = pathlib.Path(__file__).parent

# Modal's TaskCommandRouterClient driving a router (test_modal_client.py).
MODAL_DRIVER = _HERE / "modal_driver.py"
# Modal's image RPCs, through its client and its Sandbox (test_modal_images.py).
MODAL_IMAGES_DRIVER = _HERE / "modal_images_driver.py"
