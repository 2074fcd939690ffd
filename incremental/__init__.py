"""Few-shot class-incremental learning methods (FSCIL)."""
