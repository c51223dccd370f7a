"""Video decoding, face tracking, windowing, and the per-segment processing function."""
