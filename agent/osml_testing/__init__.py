"""Helpers for drills and tests (hostile neighbours). Not part of the shipped package."""
