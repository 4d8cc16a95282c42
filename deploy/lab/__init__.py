"""pyweave's labs: several hosts on one machine, for the demo, the tests and the benchmarks.

Not part of the product (installed as the package `pyweave_lab`, from `deploy/lab/`):
- `lab`: hosts as network namespaces on a switch namespace (`Lab`), the test image;
- `demo`: the weave tutorial played on such a lab (`pyweave-demo`, `scripts/demo.sh`);
- `compose_host`: the main process of a host container of the compose lab (`deploy/docker-compose.yml`).
"""

from pyweave_lab.lab import TEST_IMAGE, Lab, LabHost, ensure_test_image, leftovers, sh

__all__ = ["TEST_IMAGE", "Lab", "LabHost", "ensure_test_image", "leftovers", "sh"]
