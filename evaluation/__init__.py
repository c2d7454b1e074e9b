"""`e4t eval`: measures personalization (identity, context fidelity, diversity) on held-out subjects."""
