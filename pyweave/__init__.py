"""pyweave: multi-host networking for Docker containers (etcd control plane, kernel VXLAN data plane)."""

__version__ = "0.1.0"
