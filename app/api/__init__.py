"""The two HTTP dialects: messaging (PostageApp) and schedules (Omni)."""
