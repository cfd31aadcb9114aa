"""The operator's surface over HTTP: admin authentication and the GHL Marketplace OAuth routes."""
