"""Archive discovery, subjects, reference pairing, planning and execution of segments."""
