"""Policies: one file each, composed into the onion by ``policies.registry``."""
