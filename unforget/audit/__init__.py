"""Membership-inference audit: signals (torch) -> scores -> metrics (numpy) -> verdict."""
