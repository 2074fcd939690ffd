"""Few-shot learning methods (episodic, FSL)."""
