"""Packages: a tenant's requirements resolved to wheels, kept once in a
content-addressed, read-only package store that every child may map."""
