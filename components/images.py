"""Container images for the components (compile-time build settings)."""

import os

CPU_IMAGE = os.environ.get("CXRFLOW_IMAGE", "ghcr.io/cxrflow/cxrflow:0.1.0")
GPU_IMAGE = os.environ.get("CXRFLOW_GPU_IMAGE", "ghcr.io/cxrflow/cxrflow:0.1.0-gpu")
