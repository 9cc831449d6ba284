"""Placement and communication: Ray actor groups (or in-process members), placement groups, weight sync."""
