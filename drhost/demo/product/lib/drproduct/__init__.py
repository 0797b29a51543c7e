"""drproduct: the sample disaster-recovery product (stdlib only, Python 3.9+)."""
