"""The demo's stages, one module per concern; each registers with ``edgecompress.demo.demo_stage``."""
