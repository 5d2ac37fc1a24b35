"""Pipeline commands (add-class, segment, inspect, …) registered on the main app."""

from __future__ import annotations
