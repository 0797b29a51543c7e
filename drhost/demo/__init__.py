"""The demo: the sample product `drproduct` (in product/) and helpers to install it on this machine."""
