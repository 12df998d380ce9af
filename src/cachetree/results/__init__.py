"""Results above the cache tree: combining parts with combiners, merging and splitting
separately computed outputs."""
